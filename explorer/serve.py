"""``streamlit run app.py`` headless on a free localhost port, and the Chromium that drives it: what the
browser tests and the app benchmark share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
SERVER_START_TIMEOUT_S = 90
CHROMIUM = "/usr/bin/chromium"  # Debian's; Playwright downloads no browser
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
# no UMAP compile or export browser in the background: they would only compete for the cores
QUIET_ENV = {"GLOM_VIZ_WARM_UP": "0"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serve_app(env: dict | None = None, log_path: Path | None = None, script: Path = APP, base_path: str = ""):
    """`streamlit run app.py` (or another script) headless on a free localhost port, under ``base_path``
    (server.baseUrlPath) if given; yields its URL, stops it after."""
    with serve_process(env, log_path, script, base_path) as (url, _):
        yield url


@contextmanager
def serve_process(env: dict | None = None, log_path: Path | None = None, script: Path = APP, base_path: str = ""):
    """Like ``serve_app``, yielding ``(url, process)``: the server's process, for measuring it."""
    port = free_port()
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    base = ["--server.baseUrlPath", base_path] if base_path else []
    process = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(script), "--server.port", str(port),
         "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false", *base],
        cwd=script.parent, env={**os.environ, **QUIET_ENV, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}" + (f"/{base_path}" if base_path else "")
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"streamlit exited with code {process.returncode} before serving")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                    if response.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit did not answer on {url} within {SERVER_START_TIMEOUT_S} s")
            time.sleep(0.3)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log is not subprocess.DEVNULL:
            log.close()
