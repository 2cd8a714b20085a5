"""GLOM's runs in the app: in a few niced worker threads of their own, stopped when their page goes away."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

import pytest
import torch

from explorer import cache, running
from explorer import limits
from explorer.limits import RUN_NICE, RUN_WORKERS, run_threads
from explorer.settings import RunSettings
from glom_viz.model import Glom
from glom_viz.runs import run


def in_worker(function):
    return cache.run_workers().submit(function).result(timeout=60)


def thread_nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def test_run_workers_are_niced_below_the_page_threads():
    own = thread_nice()
    assert in_worker(thread_nice) == min(19, own + RUN_NICE)  # nice is relative: a niced server's runs lower still
    assert thread_nice() == own  # the page's (and Streamlit's) threads keep the server's priority


def test_at_most_run_workers_runs_at_once():
    active, most, lock = [0], [0], threading.Lock()

    def one_run():
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1

    for future in [cache.run_workers().submit(one_run) for _ in range(RUN_WORKERS * 3)]:
        future.result(timeout=60)
    assert most[0] == RUN_WORKERS


def test_torch_threads_in_a_worker_follow_the_server_setting():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert in_worker(torch.get_num_threads) == 1  # set once by the page, kept in the workers
    finally:
        torch.set_num_threads(before)


def frame_and_model():
    torch.manual_seed(0)
    model = Glom(dim=16, levels=2, image_size=16, patch_size=4).eval()
    return SimpleNamespace(model=model), SimpleNamespace(tensor=torch.rand(1, 3, 16, 16))


def test_a_run_in_a_worker_is_the_run_itself():
    loaded, frame = frame_and_model()
    shown = running.compute(loaded, frame, None, RunSettings(iterations=4), "picture")
    direct = run(loaded.model, frame.tensor, 4, precision="fp32")
    torch.testing.assert_close(torch.as_tensor(shown.states), torch.as_tensor(direct.states))


def test_a_run_stops_at_its_next_step_when_its_page_goes_away(monkeypatch):
    """Streamlit stops a page's script by raising in its thread (here: while it draws the progress)."""
    steps_run = []

    def slow_run(model, images, iterations, *, progress, **_):
        for step in range(1, iterations + 1):
            time.sleep(0.02)
            progress(step, iterations)
            steps_run.append(step)
        return "finished"

    class PageGone(Exception):
        pass

    class Bar:
        def progress(self, value, text):
            raise PageGone

        def empty(self):
            pass

    monkeypatch.setattr(running.runs, "run", slow_run)
    monkeypatch.setattr(running.st, "progress", lambda *args, **kwargs: Bar())
    loaded, frame = frame_and_model()
    with pytest.raises(PageGone):
        running.compute(loaded, frame, None, RunSettings(iterations=500), "picture")
    time.sleep(0.5)  # long enough for the worker to see it
    stopped_at = len(steps_run)
    time.sleep(0.3)
    assert len(steps_run) == stopped_at < 500  # it stopped, long before its 500 steps
    assert in_worker(lambda: "free") == "free"  # and its worker serves the next run


def test_a_big_run_alone_takes_every_core_and_one_beside_another(monkeypatch):
    monkeypatch.setattr(limits, "TORCH_THREADS", 1)
    monkeypatch.setattr(limits, "LONE_RUN_THREADS", 2)
    seed = Glom(dim=512, levels=6, image_size=224, patch_size=14).config  # the seed README's model
    shipped = Glom(dim=64, levels=4, image_size=64, patch_size=4).config
    assert run_threads(seed, 1) == 2
    assert run_threads(seed, 2) == 1
    assert run_threads(shipped, 1) == 1  # a tenth of a second on one thread: more threads only risk waiting


def test_a_run_gives_back_its_threads_at_the_step_after_another_run_starts(monkeypatch):
    monkeypatch.setattr(limits, "TORCH_THREADS", 1)
    monkeypatch.setattr(limits, "LONE_RUN_THREADS", 2)
    monkeypatch.setattr(limits, "BIG_RUN_WORK", 1)  # every model is big
    threads_at_step = []

    def recording_run(model, images, iterations, *, progress, **_):
        for step in range(1, iterations + 1):
            threads_at_step.append(torch.get_num_threads())
            if step == 3:
                running._IN_FLIGHT.__enter__()  # another visitor's run starts beside this one
            progress(step, iterations)
        running._IN_FLIGHT.__exit__()
        return "finished"

    monkeypatch.setattr(running.runs, "run", recording_run)
    loaded, frame = frame_and_model()
    assert running.compute(loaded, frame, None, RunSettings(iterations=5), "picture") == "finished"
    assert threads_at_step == [2, 2, 2, 1, 1]
    assert running._IN_FLIGHT.count == 0


def test_the_progress_bar_hears_the_latest_step_once_per_look(monkeypatch):
    told = []

    def quick_steps(model, images, iterations, *, progress, **_):
        for step in range(1, iterations + 1):
            progress(step, iterations)
        time.sleep(3 * running.POLL_S)  # the page looks while the run finishes
        return "finished"

    class Bar:
        def progress(self, value, text):
            told.append(text)

        def empty(self):
            pass

    monkeypatch.setattr(running.runs, "run", quick_steps)
    monkeypatch.setattr(running.st, "progress", lambda *args, **kwargs: Bar())
    loaded, frame = frame_and_model()
    running.compute(loaded, frame, None, RunSettings(iterations=40), "picture")
    assert told[-1] == "picture: step 40 of 40"
    assert len(told) < 40
