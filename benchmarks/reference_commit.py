"""An earlier commit's glom_viz, importable beside this one, for benchmarks that compare the two in one process.

``load_package("9087833")`` reads the commit's ``glom_viz/*.py`` with ``git show`` into a temporary folder as the
package ``glom_viz_<commit>`` (its own imports renamed to it) and imports it. Needs the git history: run the
benchmarks from a clone of the repository.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

REPOSITORY = Path(__file__).resolve().parent.parent
_FOLDERS: list[tempfile.TemporaryDirectory] = []  # kept for the life of the process


def load_package(commit: str, modules: tuple[str, ...] = ("errors", "model", "scenes", "motion", "checkpoints",
                                                           "train")) -> dict[str, ModuleType]:
    """{module name: the commit's module}, imported as ``glom_viz_<commit>.<module>``."""
    package = f"glom_viz_{commit}"
    if package not in sys.modules:
        folder = tempfile.TemporaryDirectory(prefix=f"{package}-")
        _FOLDERS.append(folder)
        root = Path(folder.name) / package
        root.mkdir()
        (root / "__init__.py").write_text(f'"""glom_viz as of commit {commit}, for comparison."""\n')
        for module in modules:
            try:
                source = subprocess.run(["git", "-C", str(REPOSITORY), "show", f"{commit}:glom_viz/{module}.py"],
                                        check=True, capture_output=True, text=True).stdout
            except (OSError, subprocess.CalledProcessError) as error:
                raise SystemExit(f"cannot read glom_viz/{module}.py of commit {commit} with git: run from a clone "
                                 f"of the repository with its history ({error})") from error
            (root / f"{module}.py").write_text(re.sub(r"\bglom_viz(?=[. ])", package, source))
        spec = importlib.util.spec_from_file_location(package, root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        sys.modules[package] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[package])
    return {module: importlib.import_module(f"{package}.{module}") for module in modules}
