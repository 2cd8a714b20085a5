"""Training runs as data: the trainer keeps a checkpoint every N steps, and glom_viz.training_runs opens the folder
it wrote, tolerates a run still writing (a checkpoint cut short, a log line cut short), and never leaves
the runs folder the server names."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from glom_viz.checkpoints import read_checkpoint, save_checkpoint
from glom_viz.errors import RunError
from glom_viz.model import Glom, GlomConfig
from glom_viz.training_runs import RUNS_ENV, find_runs, open_run, run_path, runs_root
from glom_viz.train import KEPT_DIR, LOG_FILE, MODEL_FILE, Trainer, kept_checkpoint_name, main

FLAGS = ["--dim", "16", "--levels", "4", "--image-size", "32", "--iters", "2", "--batch-size", "2", "--steps", "4",
         "--checkpoint-every", "2", "--warmup", "1", "--quiet"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A runs folder holding one finished run, trained by the command line: runs/tiny."""
    root = tmp_path_factory.mktemp("runs")
    assert main(FLAGS + ["--out", str(root / "tiny")]) == 0
    return root


def copy_run(root, name, to):
    shutil.copytree(root / name, root / to)
    return root / to


def test_the_trainer_keeps_a_checkpoint_every_n_steps_from_the_untrained_start(root):
    kept = sorted(p.name for p in (root / "tiny" / KEPT_DIR).iterdir())
    assert kept == [kept_checkpoint_name(step) for step in (0, 2, 4)]
    start = read_checkpoint(root / "tiny" / KEPT_DIR / kept_checkpoint_name(0))
    end = read_checkpoint(root / "tiny" / KEPT_DIR / kept_checkpoint_name(4))
    assert start.metadata["step"] == "0" and end.metadata["step"] == "4"
    latest = read_checkpoint(root / "tiny" / MODEL_FILE)
    assert latest.metadata == end.metadata, "the latest checkpoint is the last one kept"
    for name, tensor in latest.model.state_dict().items():
        assert torch.equal(tensor, end.model.state_dict()[name]), name
    torch.manual_seed(0)  # the trainer's seed: step 0 holds the weights it started from
    fresh = Trainer(Trainer.resume(root / "tiny").config).model.state_dict()
    for name, tensor in start.model.state_dict().items():
        assert torch.equal(tensor, fresh[name]), name
    assert any(not torch.equal(tensor, end.model.state_dict()[name]) for name, tensor in fresh.items())


def test_open_run_lists_checkpoints_by_step_and_reads_the_log(root):
    run = open_run("tiny", root)
    assert run.steps == [0, 2, 4] and run.problems == ()
    assert [record["step"] for record in run.log] == [1, 2, 3, 4]
    curves = run.losses()
    assert {"total", "reconstruction"} <= set(curves) and "lr" not in curves and "elapsed" not in curves
    steps, values = curves["total"]
    assert steps == [1, 2, 3, 4] and values == [record["total"] for record in run.log]
    assert run.checkpoint(2).metadata["step"] == "2"
    with pytest.raises(RunError, match="no readable checkpoint at step 3: its checkpoints are at steps 0, 2, 4"):
        run.checkpoint(3)


def test_a_run_still_training_shows_what_it_has(root):
    """A checkpoint cut short while being written and a log line cut short: both left out, said, the rest works."""
    path = copy_run(root, "tiny", "training")
    cut = path / KEPT_DIR / kept_checkpoint_name(4)
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    (path / MODEL_FILE).unlink()  # replaced at the same moment
    with open(path / LOG_FILE, "a") as log:
        log.write('{"step": 5, "reconstruction": 0.3')
    run = open_run("training", root)
    assert run.steps == [0, 2] and len(run.checkpoints) == 3
    assert [record["step"] for record in run.log] == [1, 2, 3, 4]
    assert any("checkpoint at step 4 is cut short" in p and "still training" in p for p in run.problems)
    assert any("1 of the lines of run training's log could not be read" in p for p in run.problems)
    assert run.checkpoint(2).model.config.levels == 4


def test_a_run_with_no_checkpoint_yet_says_so_and_keeps_its_losses(root):
    path = root / "fresh"
    path.mkdir()
    shutil.copy(root / "tiny" / LOG_FILE, path / LOG_FILE)
    run = open_run("fresh", root)
    assert run.steps == [] and len(run.log) == 4
    assert any("no checkpoint to load yet" in p for p in run.problems)
    garbage = root / "garbage"
    (garbage / KEPT_DIR).mkdir(parents=True)
    (garbage / KEPT_DIR / kept_checkpoint_name(0)).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    run = open_run("garbage", root)
    assert run.steps == [] and any("cannot be read" in p for p in run.problems)


def test_an_older_run_with_only_its_latest_checkpoint_opens_at_its_step(tmp_path):
    model = Glom(**GlomConfig(dim=16, levels=3, image_size=32, patch_size=4).to_dict())
    save_checkpoint(model, tmp_path / "old" / MODEL_FILE, step="300")
    run = open_run("old", tmp_path)
    assert run.steps == [300] and run.problems == ()
    assert run.checkpoint(300).model.config.dim == 16


def test_runs_are_found_only_under_the_server_named_root(root, tmp_path, monkeypatch):
    nested = root / "replay" / "s1"
    nested.mkdir(parents=True)
    shutil.copy(root / "tiny" / LOG_FILE, nested / LOG_FILE)
    (root / ".hidden").mkdir()
    shutil.copy(root / "tiny" / LOG_FILE, root / ".hidden" / LOG_FILE)
    outside = tmp_path / "outside"
    shutil.copytree(root / "tiny", outside)
    os.symlink(outside, root / "link")
    names = find_runs(root)
    assert {"tiny", "replay/s1"} <= set(names)
    assert not any(name.startswith((".hidden", "link")) or KEPT_DIR in name for name in names)
    assert find_runs(tmp_path / "none") == []
    monkeypatch.setenv(RUNS_ENV, str(root))
    assert runs_root() == root and "tiny" in find_runs()
    assert open_run("tiny").steps == [0, 2, 4]
    monkeypatch.delenv(RUNS_ENV)
    assert str(runs_root()) == "runs"


@pytest.mark.parametrize("name, words", [
    ("..", "not a run name"),
    ("../tiny", "not a run name"),
    ("tiny/../../etc", "not a run name"),
    ("/etc", "not a run name"),
    ("", "not a run name"),
    (".hidden", "not a run name"),
    ("tiny\\..\\..", "not a run name"),
    ("a/b/c/d", "not a run name"),
    ("missing", "there is no run missing"),
    ("tiny/checkpoints/nothing", "there is no run"),
    ("link", "leads out of the runs folder"),
])
def test_names_that_leave_the_runs_folder_are_refused(root, tmp_path, name, words):
    if not (root / "link").exists():
        outside = tmp_path / "outside"
        outside.mkdir()
        os.symlink(outside, root / "link")
    with pytest.raises(RunError, match=words):
        run_path(name, root)


def test_a_log_with_odd_lines_keeps_the_good_ones(tmp_path):
    path = tmp_path / "odd"
    path.mkdir()
    lines = [{"step": 1, "total": 1.0}, "not json", {"no step": 1}, {"step": "2"}, {"step": 3, "total": float("nan")},
             {"step": 4, "total": 0.5, "note": "text"}]
    (path / LOG_FILE).write_text("\n".join(json.dumps(x) if isinstance(x, dict) else x for x in lines) + "\n\n")
    run = open_run("odd", tmp_path)
    assert [record["step"] for record in run.log] == [1, 3, 4]
    assert run.losses() == {"total": ([1, 4], [1.0, 0.5])}
    assert any("3 of the lines" in p for p in run.problems)
