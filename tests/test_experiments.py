"""The scripts behind the shipped model's stages (experiments/): precomputed groups are the trainer's
own, keyed so that the trainer never recomputes them, a timed run checkpoints and logs, and the CPU
replay chains the recorded stages, stops each where it was shipped and picks up where it stopped."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from glom_viz.checkpoints import load_checkpoint, read_checkpoint
from glom_viz.errors import ConfigError
from glom_viz.train import TrainConfig, batch_scenes, parse_args, scene_groups

EXPERIMENTS = Path(__file__).parent.parent / "experiments"
sys.path.insert(0, str(EXPERIMENTS))
import pool_groups  # noqa: E402
import replay_cpu  # noqa: E402
import timed_fine_tune  # noqa: E402
import world_pictures  # noqa: E402

POOL = 3
FLAGS = ["--dim", "16", "--levels", "4", "--image-size", "32", "--iters", "2", "--batch-size", "2",
         "--consensus-radii", "1.5,2,3,4", "--recon-level", "0", "--contrast-weight", "0",
         "--motion-weight", "0.5", "--motion-levels", "2", "--similarity-weight", "0.5",
         "--similarity-levels", "1", "--group-agreement", "0.3", "--scenes", str(POOL),
         "--decoder-warmup", "2", "--warmup", "2", "--steps", "100000", "--quiet"]


@pytest.fixture(scope="module")
def groups_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("groups") / "groups.npz"
    pool_groups.main(["--image-size", "32", "--scenes", str(POOL), "--group-agreement", "0.3", "--out", str(path)])
    return path


def test_pooled_groups_are_the_trainers_own(groups_file):
    stored = np.load(groups_file)
    config = TrainConfig(image_size=32, scenes=POOL, motion_weight=0.5, similarity_weight=0.5, group_agreement=0.3)
    assert len(stored["seeds"]) == 2 * POOL  # every pool scene, both mirror flags
    for step in range(3):
        seeds, flips = batch_scenes(config, step)
        fresh = scene_groups(seeds, flips, config)
        for i, (seed, flip) in enumerate(zip(seeds, flips)):
            row = np.flatnonzero((stored["seeds"] == seed) & (stored["flips"] == flip))[0]
            for term in ("motion", "similarity"):
                assert (stored[term][row] == fresh[term][i].numpy()).all()


def test_a_timed_run_uses_the_pooled_groups_checkpoints_and_logs(groups_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    computed = []
    monkeypatch.setattr("glom_viz.train._groups_of_scene", lambda *args: computed.append(args))
    assert timed_fine_tune.main(["--budget", "8", "--margin", "1", "--groups", str(groups_file), "--", *FLAGS, "--out", str(out)]) == 0
    assert computed == []  # every draw was served from the precomputed pool
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == list(range(1, len(log) + 1))
    checkpoints = sorted(out.glob("step_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
    assert checkpoints and checkpoints[-1].stem == f"step_{len(log)}"
    assert load_checkpoint(checkpoints[-1]).config.image_size == 32
    assert log[-1]["lr"] < log[len(log) // 2]["lr"]  # the schedule was fitted to the budget and decays


def test_groups_for_other_settings_are_refused(groups_file, tmp_path):
    with pytest.raises(ConfigError, match="holds groups for"):
        timed_fine_tune.main(["--budget", "5", "--groups", str(groups_file), "--", *FLAGS,
                              "--group-agreement", "0.5", "--out", str(tmp_path / "run")])


def test_the_cpu_replay_chains_the_eleven_recorded_stages(tmp_path):
    shipped = json.loads(replay_cpu.SHIPPED.read_text())
    entries = replay_cpu.plan(tmp_path, processes=2)
    assert [e["stage"] for e in entries] == list(range(1, 12))
    assert [e["stop"] for e in entries] == [shipped["steps"]] + [s["steps"] for s in shipped["fine_tune"]]
    for previous, entry in zip([None] + entries, entries):
        config, _ = parse_args(entry["flags"])
        assert config.device == "cpu" and config.out == str(tmp_path / f"s{entry['stage']}")
        assert config.init == (previous and str(previous["out"] / "model.safetensors"))
        assert config.accumulate == 0 and config.groups_cache == str(tmp_path / "groups")  # the trainer picks
        assert entry["stop"] <= config.steps
    # stage 11 is stage 9's objective at another batch, rate and schedule
    objective = {k: v for k, v in parse_args(entries[8]["flags"])[0].to_dict().items()
                 if k not in ("batch_size", "accumulate", "lr", "steps", "seed", "decoder_warmup", "init", "out")}
    assert objective.items() <= parse_args(entries[10]["flags"])[0].to_dict().items()


def test_the_cpu_replay_stops_each_stage_where_recorded_and_goes_on_where_it_stopped(tmp_path, monkeypatch):
    tiny = " ".join(FLAGS[:-1]).replace("--steps 100000", "--steps 6")  # FLAGS without --quiet
    recorded = {"command": f"python -m glom_viz.train {tiny} --seed 1 --out runs/a", "steps": 3,
                "fine_tune": [{"command": f"python -m glom_viz.train {tiny} --init <stage 1 model> --seed 2 "
                                          "--out runs/b", "steps": 2}]}
    (tmp_path / "shipped.json").write_text(json.dumps(recorded))
    monkeypatch.setattr(replay_cpu, "SHIPPED", tmp_path / "shipped.json")
    runs = tmp_path / "runs"
    assert replay_cpu.main(["--runs", str(runs), "--processes", "1", "--print"]) == 0
    assert not runs.exists()  # --print runs nothing
    assert replay_cpu.main(["--runs", str(runs), "--processes", "1"]) == 0
    assert replay_cpu.step_of(runs / "s1") == 3 and replay_cpu.step_of(runs / "s2") == 2
    timings = [json.loads(line) for line in (runs / replay_cpu.TIMINGS_FILE).read_text().splitlines()]
    assert [(t["stage"], t["from_step"], t["to_step"]) for t in timings] == [(1, 0, 3), (2, 0, 2)]
    assert all(t["cpu_seconds"] > 0 and t["wall_seconds"] > 0 for t in timings)
    stage_2 = read_checkpoint(runs / "s2" / "model.safetensors")
    assert json.loads(stage_2.metadata["train_config"])["init"] == str(runs / "s1" / "model.safetensors")
    stage_1 = (runs / "s1" / "model.safetensors").read_bytes()

    recorded["fine_tune"][0]["steps"] = 4  # as if stage 2 had been cut short at step 2
    (tmp_path / "shipped.json").write_text(json.dumps(recorded))
    assert replay_cpu.main(["--runs", str(runs), "--processes", "1"]) == 0
    assert (runs / "s1" / "model.safetensors").read_bytes() == stage_1  # done: not run again
    log = [json.loads(line) for line in (runs / "s2" / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]  # resumed, not restarted
    assert replay_cpu.step_of(runs / "s2") == 4


def test_the_scripts_run_from_the_command_line(tmp_path):
    result = subprocess.run([sys.executable, str(EXPERIMENTS / "timed_fine_tune.py"), "--help"],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "--budget" in result.stdout


def test_the_world_pictures_leave_out_the_photographs_that_score_the_islands(tmp_path):
    from explorer.settings import PHOTOS
    from glom_viz.data import load_dataset

    world_pictures.main(["--out", str(tmp_path), "--windows", "2", "--size", "32"])
    names = sorted(path.name for path in (tmp_path / "images").iterdir())
    assert len(names) == 2 * len(world_pictures.PICTURES)
    assert not {name.split("-")[0] for name in names} & {*PHOTOS, "cat"}  # chelsea is scikit-image's cat too
    dataset = load_dataset(tmp_path, 32, read_masks=False)
    assert len(dataset) == len(names) and not dataset.skipped
    windows = dataset.images(range(len(dataset)))
    assert windows.shape == (len(names), 3, 32, 32) and windows.std() > 0.05
