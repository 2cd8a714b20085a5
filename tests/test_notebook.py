"""The island-discovery notebook runs top to bottom (so it never rots) and shows what it promises."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "island_discovery.ipynb"
TIMEOUT_S = 120  # per cell; the whole notebook runs in well under a minute on an idle 2-core CPU


@pytest.mark.timeout(300)
def test_notebook_runs_and_scores_every_level(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=TIMEOUT_S, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.output_type == "stream")
    assert "FG-ARI objects" in text
    levels = [line.split() for line in text.splitlines() if line.strip()[:1].isdigit() and len(line.split()) == 3]
    assert [int(row[0]) for row in levels] == [0, 1, 2, 3]
    assert all(-1 <= float(v) <= 1 for row in levels for v in row[1:])
    
    figures = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])
               if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert len(figures) == 2  # the side-by-side overlay and the level x step sheet
