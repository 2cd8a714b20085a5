"""Training: the loss goes down, checkpoints round-trip and resume exactly, bad configs stop with a
message keeping the last good checkpoint, and 2-process DDP gives one process's gradients."""

import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from einops import rearrange

from conftest import sprites
from glom_viz.checkpoints import load_checkpoint, read_checkpoint
from glom_viz.errors import CheckpointError, ConfigError
from glom_viz.motion import UNCLEAR
from glom_viz.train import (DATA_DECODER_WARMUP, DATA_RECIPE, MICRO_BATCH, MODEL_FILE, UNBOUNDED_STEPS, TrainConfig,
                             Trainer, batch_scenes, learning_rate, main, micro_batch_plan, parse_args, scene_groups,
                             settling_steps, usable_cpus)

TINY = dict(dim=16, levels=3, image_size=32, patch_size=4, iters=3, batch_size=4, warmup=2, lr=3e-3,
            checkpoint_every=0, consensus_cosine=True, attention_scale=8.0, level_norm="layernorm",
            consensus_radii=(1.5, 2.0, 3.0), scenes=0, flip=False, recon_level=0,
            contrast_weight=0.0, contrast_levels=(), contrast_radii=())
CONTRAST = dict(contrast_weight=0.5, contrast_levels=(1, 2), contrast_radii=(1.5, 3.0))
MOTION = dict(motion_weight=0.5, motion_levels=(2,))
SIMILARITY = dict(similarity_weight=0.5, similarity_levels=(1,))


def tiny(**changes) -> TrainConfig:
    return TrainConfig(**{**TINY, **changes})


def params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in trainer.learner.named_parameters()}


def losses_before_and_after(trainer: Trainer) -> tuple[dict, dict]:
    """The losses of step 0's batch before and after the trainer's run."""
    with torch.no_grad():
        before = trainer.compute_losses(0)
    trainer.fit()
    with torch.no_grad():
        return before, trainer.compute_losses(0)


def test_a_short_run_lowers_the_loss_on_a_fixed_batch():
    # 60 steps: the motion term moves slowest; at 20 its drop is within the noise between CPUs
    trainer = Trainer(tiny(steps=60, scenes=4, **CONTRAST, **MOTION))
    before, after = losses_before_and_after(trainer)
    assert after["reconstruction"] < 0.7 * before["reconstruction"]
    assert after["motion"] < before["motion"]
    assert after["total"] < before["total"]
    assert [row["step"] for row in trainer.history] == list(range(1, 61))


@pytest.mark.parametrize("still", [True, False])
def test_the_similarity_term_is_learnt(still):
    trainer = Trainer(tiny(steps=30, scenes=4, similarity_weight=1.0, similarity_levels=(1,), similarity_still=still))
    before, after = losses_before_and_after(trainer)
    assert after["similarity"] < before["similarity"] - 0.05
    assert after["total"] < before["total"]


def test_callbacks_see_every_step_and_unknown_events_are_refused():
    seen = []
    trainer = Trainer(tiny(steps=3)).set_callback("on_step_end", lambda t: seen.append((t.step, t.losses["total"])))
    trainer.fit()
    assert [step for step, _ in seen] == [1, 2, 3] and all(loss > 0 for _, loss in seen)
    with pytest.raises(ConfigError, match="unknown training event"):
        trainer.set_callback("on_epoch", print)


def test_checkpoint_round_trips_and_resuming_continues_exactly(tmp_path):
    straight = Trainer(tiny(steps=4, out=str(tmp_path / "a")))
    straight.fit()

    first = Trainer(tiny(steps=4, out=str(tmp_path / "b")))
    first.fit(steps=2)
    first.save()
    model = load_checkpoint(tmp_path / "b" / MODEL_FILE)
    assert model.config == first.model.config
    for name, tensor in first.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    image = torch.rand(1, 3, 32, 32)
    first.model.eval()
    torch.testing.assert_close(model(image), first.model(image))

    resumed = Trainer.resume(tmp_path / "b")
    assert resumed.step == 2 and len(resumed.history) == 2
    resumed.fit()
    for name, value in params(straight).items():
        torch.testing.assert_close(params(resumed)[name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_resume_without_a_run_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="no run to resume"):
        Trainer.resume(tmp_path)


@pytest.mark.parametrize("changes, message", [
    (dict(image_size=30), "not divisible by patch_size"),
    (dict(batch_size=0), "no data"),
    (dict(contrast_levels=(1,), contrast_radii=()), "one contrast radius per"),
    (dict(recon_level=5), "not a level"),
    (dict(contrast_weight=0.5), "needs contrast_levels"),
    (dict(noise_std=float("nan")), "noise_std"),
    (dict(motion_weight=0.5, motion_levels=(3,)), "motion_levels must lie"),
    (dict(**MOTION, max_shift=1), "max_shift"),
    (dict(similarity_weight=0.5, similarity_levels=()), "needs similarity_levels"),
    (dict(similarity_weight=0.5, similarity_levels=(3,)), "similarity_levels must lie"),
    (dict(**SIMILARITY, similarity_scale=0), "similarity_scale"),
    (dict(**SIMILARITY, max_shift=1), "max_shift"),
    (dict(**MOTION, group_agreement=0), "group_agreement"),
    (dict(**MOTION, group_balance=-0.5), "group_balance"),
    (dict(**MOTION, group_edge_weight=0.0), "group_edge_weight"),
    (dict(iters_max=2), "iters_max"),
    (dict(decoder_warmup=-1), "decoder_warmup"),
    (dict(init="/nonexistent/model.safetensors"), "no such checkpoint"),
    (dict(carry_share=1.5), "carry_share"),
    (dict(carry_share=0.5, max_shift=1), "max_shift"),
    (dict(carry_share=0.5, data="."), "carry_share continues the built-in moving scenes"),
    (dict(data_share=0.0, data="."), "data_share is the share of each batch"),
    (dict(data_share=1.5, data="."), "data_share is the share of each batch"),
    (dict(data_share=0.5), "give --data"),
    (dict(carry_share=0.5, carry_release=-0.1), "carry_release is the RMS pixel change"),
    (dict(carry_release=0.1), "no scene is carried"),
    (dict(shift_weight=-1.0), "shift_weight"),
    (dict(shift_weight=1.0, max_view_shift=8), "max_view_shift must be between 1 and 7"),
    (dict(shift_levels=(3,)), "shift_levels must lie"),
])
def test_configs_that_cannot_work_are_refused(changes, message):
    with pytest.raises((ConfigError, CheckpointError), match=message):
        Trainer(tiny(**changes))


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = Trainer(tiny(steps=6, checkpoint_every=2, out=str(tmp_path)))
    compute = trainer.compute_losses

    def poisoned(step, micro=0):
        losses = compute(step, micro)
        if step == 3:
            losses["total"] = losses["total"] * float("nan")
        return losses

    trainer.compute_losses = poisoned
    with pytest.raises(FloatingPointError, match="step 3.*last good checkpoint"):
        trainer.fit()
    saved = load_checkpoint(tmp_path / MODEL_FILE)
    assert Trainer.resume(tmp_path).step == 2
    assert all(torch.isfinite(t).all() for t in saved.state_dict().values())


def test_command_line_trains_logs_and_reports_bad_configs(tmp_path, capsys):
    out = tmp_path / "run"
    flags = ["--dim", "16", "--levels", "4", "--image-size", "32", "--iters", "2", "--batch-size", "2",
             "--steps", "2", "--checkpoint-every", "1", "--quiet", "--out", str(out)]
    assert main(flags) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2]
    with open(out / "log.jsonl", "a") as log:  # a run killed after logging step 3, before checkpointing it
        log.write(json.dumps({"step": 3, "elapsed": 9.0}) + "\n" + '{"step": 4, "ela')  # cut short mid-line
    assert main(["--resume", "--out", str(out), "--steps", "4", "--quiet"]) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in log] == [1, 2, 3, 4]  # the lost step 3 is logged once, as redone
    assert log[2]["elapsed"] != 9.0
    assert main(flags[:-2] + ["--out", str(tmp_path / "bad"), "--image-size", "30"]) == 2
    assert "not divisible" in capsys.readouterr().err


def test_stop_at_ends_early_on_the_full_schedule_and_resume_finishes_it(tmp_path):
    flags = ["--dim", "16", "--levels", "4", "--image-size", "32", "--iters", "2", "--batch-size", "2",
             "--steps", "6", "--warmup", "1", "--checkpoint-every", "100", "--quiet"]
    assert main(flags + ["--out", str(tmp_path / "whole")]) == 0
    assert main(flags + ["--out", str(tmp_path / "stopped"), "--stop-at", "4"]) == 0
    assert read_checkpoint(tmp_path / "stopped" / MODEL_FILE).metadata["step"] == "4"  # checkpointed there
    whole, stopped = ([json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
                      for run in ("whole", "stopped"))
    assert [row["lr"] for row in stopped] == [row["lr"] for row in whole[:4]]  # the 6-step schedule's rates
    assert main(["--resume", "--out", str(tmp_path / "stopped"), "--quiet"]) == 0
    assert read_checkpoint(tmp_path / "stopped" / MODEL_FILE).metadata["step"] == "6"
    assert main(flags + ["--out", str(tmp_path / "bad"), "--stop-at", "0"]) == 2


def test_defaults_are_the_shipped_recipe():
    shipped = json.loads((Path(__file__).parent.parent / "experiments" / "shipped.json").read_text())
    recipe = {k: v for k, v in shipped["train_config"].items() if k not in ("device", "out", "checkpoint_every")}
    defaults = TrainConfig().to_dict()
    assert {k: defaults[k] for k in recipe} == {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}


def test_scene_draws_are_reproducible_and_pool_bounded():
    config = tiny(scenes=10, flip=True)
    seeds, flips = batch_scenes(config, 5)
    again, flips_again = batch_scenes(config, 5)
    assert (seeds == again).all() and (flips == flips_again).all()
    assert seeds.max() < 10
    assert not batch_scenes(tiny(flip=False), 5)[1].any()


def test_settling_steps_span_iters_to_iters_max_and_repeat_by_step():
    assert {settling_steps(tiny(), step) for step in range(20)} == {3}
    config = tiny(iters_max=6)
    counts = [settling_steps(config, step) for step in range(200)]
    assert set(counts) == {3, 4, 5, 6} and counts == [settling_steps(config, step) for step in range(200)]
    trainer = Trainer(tiny(iters_max=6, steps=2))
    trainer.fit()
    assert math.isfinite(trainer.losses["total"])
    assert "iters_max" not in trainer.config.model_config().to_dict()  # a training setting, not the model's


def test_a_lower_group_agreement_adds_patches_to_groups_and_is_cached_apart():
    """At 0.5 every patch grouped at 0.75 keeps its group, more patches get one, and one cache serves
    both settings without mixing them up."""
    seeds, flips = batch_scenes(tiny(scenes=10, flip=True), 0)
    cache = {}
    strict, loose = (scene_groups(seeds, flips, tiny(**MOTION, **SIMILARITY, image_size=64, group_agreement=a), cache)
                     for a in (0.75, 0.5))
    for term in ("motion", "similarity"):
        kept = strict[term] != UNCLEAR
        assert (loose[term][kept] == strict[term][kept]).all()
        assert (loose[term] != UNCLEAR).sum() > kept.sum()


def test_a_groups_cache_folder_serves_later_runs_with_the_same_group_settings(tmp_path, monkeypatch):
    import glom_viz.train as train

    found = []
    original = train._groups_of_scene
    monkeypatch.setattr(train, "_groups_of_scene", lambda *args: found.append(args[:2]) or original(*args))
    config = dict(**MOTION, **SIMILARITY, scenes=6, flip=True, steps=2, groups_cache=str(tmp_path / "groups"))
    first = Trainer(tiny(**config, out=str(tmp_path / "a")))
    first.fit()
    assert found and list((tmp_path / "groups").glob("*-0.npz"))
    computed = dict(first._groups_cache.groups)
    found.clear()
    second = Trainer(tiny(**config, out=str(tmp_path / "b")))
    second.fit()
    assert not found  # every scene's groups came from the folder
    for key, groups in computed.items():
        for term, row in groups.items():
            assert (second._groups_cache.get(key)[term] == row).all()
    other = Trainer(tiny(**{**config, "group_agreement": 0.5}, out=str(tmp_path / "c")))
    other.fit()
    assert found  # other settings, other groups
    found.clear()
    for path in (tmp_path / "groups").glob("*.npz"):
        path.write_bytes(b"not a zip")
    with pytest.warns(UserWarning, match="unreadable groups cache"):
        Trainer(tiny(**config, out=str(tmp_path / "d"))).fit()
    assert found  # found again


@pytest.mark.parametrize("terms", [{}, dict(carry_share=0.5, shift_weight=1.0, max_view_shift=2)])
def test_micro_batches_add_up_to_the_whole_batchs_gradients_and_losses(terms):
    """accumulate=4 runs the batch in four parts; the step's gradients and losses are the whole batch's
    (fp32: under bf16 four parts round differently from one), with the continuation path and shift
    consistency too."""
    config = tiny(**CONTRAST, **MOTION, **SIMILARITY, **terms, mask_ratio=0.4, flip=True, bf16=False, batch_size=8,
                  steps=1)
    whole, parts = Trainer(config), Trainer(TrainConfig(**{**config.to_dict(), "accumulate": 4}))
    seen = []
    original = parts.shard
    parts.shard = lambda step, micro=0: seen.append(micro) or original(step, micro)
    for trainer in (whole, parts):
        trainer.optimizer.step = lambda: None  # keep the weights: compare the gradients of one state
        trainer.train_step()
    assert seen == [0, 1, 2, 3]
    for (name, a), b in zip(whole.learner.named_parameters(), parts.learner.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name in whole.losses:
        assert parts.losses[name] == pytest.approx(whole.losses[name], rel=1e-5), name


def test_micro_batches_and_threads_that_cannot_work_are_refused_with_the_reason():
    with pytest.raises(ConfigError, match="accumulate 3 .* batch_size 4"):
        Trainer(tiny(accumulate=3))
    for accumulate in (-1, 8):
        with pytest.raises(ConfigError, match=f"accumulate {accumulate} .*0 to let the trainer pick"):
            Trainer(tiny(accumulate=accumulate))
    cores = usable_cpus()
    for threads in (-1, cores + 1):
        with pytest.raises(ConfigError, match=f"threads {threads} cannot run here: .* {cores} CPU core"):
            Trainer(tiny(threads=threads))


@pytest.mark.parametrize("share, threads, expected", [
    (64, 2, 4), (16, 2, 2), (256, 2, 16), (64, 1, 4), (15, 2, 5), (4, 2, 2), (1, 2, 1), (48, 3, 3), (8, 4, 4),
])
def test_the_trainer_picks_even_micro_batches_of_at_most_sixteen_scenes(share, threads, expected):
    count = micro_batch_plan(share, threads)
    assert count == expected
    assert share % count == 0 and share // count <= MICRO_BATCH


def test_micro_batches_on_threads_give_the_gradients_of_one_thread_exactly():
    """Side by side on two threads, the micro-batches' gradients add up in order: the same bits as one
    thread running them one after another."""
    if usable_cpus() < 2:
        pytest.skip("needs two CPU cores")
    config = tiny(**MOTION, **SIMILARITY, mask_ratio=0.4, flip=True, bf16=False, batch_size=8, accumulate=4, steps=1)
    one, two = Trainer(TrainConfig(**{**config.to_dict(), "threads": 1})), Trainer(TrainConfig(**{**config.to_dict(), "threads": 2}))
    assert (one.workers, two.workers) == (1, 2)
    for trainer in (one, two):
        trainer.optimizer.step = lambda: None
        trainer.train_step()
    for (name, a), b in zip(one.learner.named_parameters(), two.learner.parameters()):
        assert torch.equal(a.grad, b.grad), name
    assert one.losses == two.losses


DDP_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch, torch.distributed as dist
    from glom_viz.train import TrainConfig, Trainer
    dist.init_process_group("gloo")
    trainer = Trainer(TrainConfig(**json.loads(sys.argv[1])))
    trainer.optimizer.step = lambda: None  # the step's gradients, as DDP leaves them
    trainer.train_step()
    grads = {n: p.grad for n, p in trainer.learner.named_parameters()}
    grads["share"] = torch.tensor(len(trainer.shard(0, 0)[0]))  # one micro-batch
    if dist.get_rank() == 0:
        torch.save(grads, sys.argv[2])
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_process_ddp_gives_the_gradients_of_one_process(tmp_path, accumulate):
    """Also with micro-batches in each process (DDP then averages once, after the last)."""
    # fp32: sharding is what is compared; under bf16 (the default where the CPU has it) two half
    # batches round differently from one whole batch
    config = tiny(**CONTRAST, **MOTION, **SIMILARITY, mask_ratio=0.4, flip=True, bf16=False, accumulate=accumulate)
    script = tmp_path / "ddp_grads.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(script), json.dumps(config.to_dict()), str(tmp_path / "grads.pt")],
        check=True, env=env, timeout=240, capture_output=True,
    )
    distributed = torch.load(tmp_path / "grads.pt", weights_only=True)
    # each process took half the batch, in `accumulate` parts
    assert distributed.pop("share") == config.batch_size // 2 // accumulate
    single = Trainer(TrainConfig(**{**config.to_dict(), "accumulate": 1}))
    single.optimizer.step = lambda: None
    single.train_step()
    for name, p in single.learner.named_parameters():
        torch.testing.assert_close(distributed[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_contrast_is_low_when_views_agree_and_ignores_near_columns():
    from glom_viz.train import Learner

    learner = Learner(tiny(**CONTRAST, temperature=0.05))
    n = learner.distances.shape[0]
    columns = torch.nn.functional.one_hot(torch.arange(n)).float()[None] * 10  # every column its own direction
    agree = learner.contrast(columns, columns, radius=2.0)
    shuffled = learner.contrast(columns, columns[:, torch.randperm(n)], radius=2.0)
    assert agree < 0.01 < shuffled
    # columns equal to their near neighbours cost nothing: near columns are not negatives
    blocks = torch.nn.functional.one_hot(torch.arange(n) // 2).float()[None] * 10  # pairs of row neighbours
    assert learner.contrast(blocks, blocks, radius=1.0) < 0.01
    assert learner.contrast(blocks, blocks, radius=0.0) > 0.5  # with no near zone the twin is a negative


def test_grouped_contrast_is_low_when_groups_agree_and_ignores_ungrouped_columns():
    from glom_viz.train import Learner

    learner = Learner(tiny(**MOTION, temperature=0.05))
    groups = torch.tensor([[0, 0, 0, 1, 1, 2, 2, -1, -1]])
    # every group its own direction (the ungrouped ones a fourth)
    columns = torch.nn.functional.one_hot(torch.where(groups < 0, 3, groups), 4).float() * 10
    # SupCon's floor: an anchor with k positives at best gives each 1/k, so log k; group 0's three
    # anchors have 2 positives each, the four of groups 1 and 2 one each
    floor = 3 * math.log(2) / 7
    assert learner.grouped_contrast(columns, groups) == pytest.approx(floor, abs=1e-3)
    mixed = columns[:, [3, 5, 0, 1, 6, 2, 4, 7, 8]]  # the same columns dealt across the groups
    assert learner.grouped_contrast(mixed, groups) > floor + 1.0
    # ungrouped columns are neither anchors nor negatives: anything there costs nothing
    noisy = columns.clone()
    noisy[:, 7:] = torch.randn(1, 2, columns.shape[-1]) * 10
    torch.testing.assert_close(learner.grouped_contrast(noisy, groups), learner.grouped_contrast(columns, groups))
    # no groups at all: zero loss and finite gradients
    free = torch.randn(1, 9, 5, requires_grad=True)
    loss = learner.grouped_contrast(free, torch.full((1, 9), -1))
    loss.backward()
    assert loss == 0 and torch.isfinite(free.grad).all()


def test_group_balance_weighs_anchors_by_their_groups_size():
    from glom_viz.train import Learner

    groups = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 2, 2, -1]])
    columns = torch.randn(1, 10, 6)

    def reference(balance: float) -> float:
        # SupCon's L_out anchor by anchor, written out plainly, then a weighted mean over anchors
        z = torch.nn.functional.normalize(columns[0], dim=-1)
        losses, weights = [], []
        for i, g in enumerate(groups[0].tolist()):
            others = [j for j, h in enumerate(groups[0].tolist()) if h >= 0 and j != i]
            positives = [j for j in others if groups[0, j] == g]
            if g < 0 or not positives:
                continue
            logits = torch.stack([z[i] @ z[j] for j in others]) / 0.2
            log_prob = dict(zip(others, logits - logits.logsumexp(0)))
            losses.append(-sum(log_prob[j] for j in positives) / len(positives))
            weights.append((len(positives) + 1) ** -balance)
        return float(sum(w * l for w, l in zip(weights, losses)) / sum(weights))

    for balance in (0.0, 0.5, 1.0):
        learner = Learner(tiny(**MOTION, temperature=0.2, group_balance=balance))
        assert float(learner.grouped_contrast(columns, groups)) == pytest.approx(reference(balance), rel=1e-5)
    # at 1 every group counts alike: with each group its own direction, only group 0's anchors (4
    # positives each, floor log 4) pay, a third of the loss rather than the 5 in 9 anchors' share
    one_hot = torch.nn.functional.one_hot(torch.where(groups < 0, 3, groups), 4).float() * 10
    balanced = Learner(tiny(**MOTION, temperature=0.05, group_balance=1.0)).grouped_contrast(one_hot, groups)
    alike = Learner(tiny(**MOTION, temperature=0.05)).grouped_contrast(one_hot, groups)
    assert float(balanced) == pytest.approx(math.log(4) / 3, abs=1e-3)
    assert float(alike) == pytest.approx(5 * math.log(4) / 9, abs=1e-3)


def test_group_edge_weight_weighs_anchors_beside_another_group():
    from glom_viz.train import Learner, group_edges

    # a 3 x 3 grid: group 1 in the top-left 2 x 2 block, group 0 around it, the corner without a group
    groups = torch.tensor([[1, 1, 0,
                            1, 1, 0,
                            0, 0, -1]])
    edges = group_edges(groups, 3)
    assert edges[0].tolist() == [False, True, True, True, True, True, True, True, False]
    columns = torch.randn(1, 9, 6)
    z = torch.nn.functional.normalize(columns[0], dim=-1)
    losses = {}
    for i, g in enumerate(groups[0].tolist()):  # SupCon's L_out per anchor, written out plainly
        others = [j for j, h in enumerate(groups[0].tolist()) if h >= 0 and j != i]
        positives = [j for j in others if groups[0, j] == g]
        if g >= 0 and positives:
            logits = torch.stack([z[i] @ z[j] for j in others]) / 0.2
            log_prob = dict(zip(others, logits - logits.logsumexp(0)))
            losses[i] = float(-sum(log_prob[j] for j in positives) / len(positives))
    for edge_weight in (1.0, 3.0):
        weights = {i: edge_weight if edges[0, i] else 1.0 for i in losses}
        expected = sum(weights[i] * losses[i] for i in losses) / sum(weights.values())
        learner = Learner(tiny(**MOTION, image_size=12, patch_size=4, temperature=0.2, group_edge_weight=edge_weight))
        assert float(learner.grouped_contrast(columns, groups)) == pytest.approx(expected, rel=1e-5)


def test_init_starts_from_a_checkpoints_weights(tmp_path):
    source = Trainer(tiny(steps=2, out=str(tmp_path)))
    source.fit()
    source.save()
    started = Trainer(tiny(steps=2, seed=5, init=str(tmp_path / MODEL_FILE)))
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(started.model.state_dict()[name], tensor), name
    # the update rule may change (it holds no parameters); the shapes may not
    wider = Trainer(tiny(steps=2, init=str(tmp_path / MODEL_FILE), consensus_radii=(1.5, 2.0, 0.0), attention_scale=12.0))
    assert wider.model.config.consensus_radii == (1.5, 2.0, 0.0)
    for name, tensor in source.model.state_dict().items():
        assert torch.equal(wider.model.state_dict()[name], tensor), name
    with pytest.raises(CheckpointError, match="dim"):
        Trainer(tiny(steps=2, init=str(tmp_path / MODEL_FILE), dim=8))


def test_init_may_widen_a_checkpoints_mlps_but_not_narrow_them(tmp_path):
    source = Trainer(tiny(steps=2, out=str(tmp_path / "narrow")))
    source.fit()
    source.save()
    widened = Trainer(tiny(steps=2, init=str(tmp_path / "narrow" / MODEL_FILE), feedforward_mult=6))
    images = torch.rand(2, 3, TINY["image_size"], TINY["image_size"])
    with torch.no_grad():
        assert torch.allclose(widened.model(images, iters=3), source.model(images, iters=3), atol=1e-5)
    widened.fit()  # the widened run trains and saves a model of its own width
    widened.save(tmp_path / "wide")
    assert load_checkpoint(tmp_path / "wide" / MODEL_FILE).config.feedforward_mult == 6
    with pytest.raises(CheckpointError, match="wider"):
        Trainer(tiny(steps=2, init=str(tmp_path / "wide" / MODEL_FILE)))


def test_init_moves_a_checkpoint_to_another_image_size(tmp_path):
    from glom_viz.model import resize_position_embedding

    source = Trainer(tiny(steps=2, out=str(tmp_path)))  # 32 px at patch 4: an 8 x 8 grid
    source.fit()
    source.save()
    finer = Trainer(tiny(steps=2, init=str(tmp_path / MODEL_FILE), image_size=48))  # 12 x 12
    for name, tensor in source.model.state_dict().items():
        if name != "pos_emb.weight":
            assert torch.equal(finer.model.state_dict()[name], tensor), name
    old, new = source.model.pos_emb.weight.detach(), finer.model.pos_emb.weight.detach()
    assert new.shape == (144, TINY["dim"])
    assert torch.allclose(new, resize_position_embedding(old, 12))
    assert torch.equal(resize_position_embedding(old, 8), old)  # the same grid: unchanged
    constant = torch.ones(64, 3)
    assert torch.allclose(resize_position_embedding(constant, 12), torch.ones(144, 3))
    finer.fit()  # and it trains at the new size
    assert torch.isfinite(torch.tensor(finer.history[-1]["total"]))


def test_decoder_warmup_keeps_the_reconstruction_from_moving_the_glom():
    # denoising alone: during the warmup only the decoder gets gradients, after it the GLOM does too
    trainer = Trainer(tiny(steps=3, decoder_warmup=2))

    def gradient_norms(step):
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.compute_losses(step)["total"].backward()
        return {part: sum(float(p.grad.abs().sum()) for p in module.parameters() if p.grad is not None)
                for part, module in (("glom", trainer.model), ("decoder", trainer.learner.decoder))}

    during, after = gradient_norms(1), gradient_norms(2)
    assert during["glom"] == 0 and during["decoder"] > 0
    assert after["glom"] > 0 and after["decoder"] > 0


# -- training on a folder (--data) ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def sprite_folder(tmp_path_factory) -> Path:
    """Six 32 px sprite scenes in the folder layout (pictures, second frames, masks), and one bad file."""
    root = sprites().write_split(tmp_path_factory.mktemp("sprites") / "train", sprites().TRAIN_SEEDS[:6], 32)
    (root / "images" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    return root


def test_a_few_data_steps_lower_the_loss_and_never_read_a_mask(sprite_folder, tmp_path, monkeypatch):
    import glom_viz.data

    def refuse(*_):
        raise AssertionError("training read a mask")

    monkeypatch.setattr(glom_viz.data, "read_mask", refuse)
    # the whole folder every step; common fate at level 1, which a 3-level model of dim 16 learns in a few steps
    trainer = Trainer(tiny(data=str(sprite_folder), steps=20, batch_size=6, motion_weight=0.5, motion_levels=(1,),
                           **SIMILARITY, checkpoint_every=20, out=str(tmp_path)))
    assert len(trainer.dataset) == 6  # the bad file skipped, the run going on
    assert any("broken.png" in name for name, _ in trainer.dataset.skipped)
    before, after = losses_before_and_after(trainer)
    assert after["reconstruction"] < 0.7 * before["reconstruction"]
    assert after["motion"] < before["motion"] and after["similarity"] < before["similarity"]
    assert (tmp_path / MODEL_FILE).exists()
    # groups are found once per picture and kept: mirrored draws reuse them
    assert len(trainer._groups_cache) <= 6


def test_mirrored_pictures_take_their_groups_mirrored(sprite_folder):
    from glom_viz.data import load_dataset
    from glom_viz.train import picture_groups

    config = tiny(data=str(sprite_folder), **MOTION, **SIMILARITY)
    dataset = load_dataset(sprite_folder, 32, read_masks=False)
    cache = {}
    plain = picture_groups(dataset, np.array([0, 1]), np.array([False, False]), config, cache)
    mirrored = picture_groups(dataset, np.array([0, 1]), np.array([True, True]), config, cache)
    assert len(cache) == 2
    for term in ("motion", "similarity"):
        assert torch.equal(mirrored[term].view(2, 8, 8), plain[term].view(2, 8, 8).flip(-1))
        assert (plain[term] >= 0).any()


def test_a_folder_mixed_into_the_scenes_fills_its_share_of_each_batch(sprite_folder, tmp_path):
    """Scenes first (carried as the continuation path says), then the folder's pictures, each with its own groups;
    micro-batches split the same batch."""
    from glom_viz.scenes import make_moving_scene
    from glom_viz.train import batch_pictures, draw_carried, picture_groups

    config = tiny(data=str(sprite_folder), data_share=0.25, batch_size=8, **MOTION, **SIMILARITY, carry_share=0.5,
                  scenes=6, flip=False, steps=2, out=str(tmp_path))
    trainer = Trainer(config)
    images, views, groups, extras = trainer.shard(0)
    seeds, _ = batch_scenes(config, 0)
    indices, _ = batch_pictures(config, 0, len(trainer.dataset))
    carried = draw_carried(config, 0)[:6]
    scenes_seen = [make_moving_scene(int(seed), 32)[int(second)].image for seed, second in zip(seeds[:6], carried)]
    assert torch.equal(images[:6], torch.from_numpy(np.stack(scenes_seen)).permute(0, 3, 1, 2))
    assert torch.equal(images[6:], trainer.dataset.images(indices[:2]))  # the step's first two pictures
    assert (extras["before"][1].numpy() == np.r_[carried, False, False]).all()  # pictures are never carried
    pictures = picture_groups(trainer.dataset, indices[:2], np.zeros(2, bool), config, {})
    for term in ("motion", "similarity"):
        assert torch.equal(groups[term][6:], pictures[term])
    # two micro-batches hold the same rows
    trainer = Trainer(tiny(**{**config.to_dict(), "accumulate": 2}))
    halves = [trainer.shard(0, micro)[0] for micro in (0, 1)]
    assert torch.equal(torch.cat(halves), images)
    trainer.fit()
    assert all(math.isfinite(row["total"]) for row in trainer.history)


def test_the_command_trains_on_a_folder_with_the_data_recipe(sprite_folder, tmp_path, capsys):
    out = tmp_path / "run"
    small = ["--dim", "16", "--levels", "4", "--image-size", "32", "--iters", "2", "--iters-max", "0",
             "--consensus-radii", "1.5,2,3,4", "--batch-size", "2", "--quiet", "--out", str(out)]
    assert main(["--data", str(sprite_folder), "--steps", "2", *small]) == 0
    assert read_checkpoint(out / MODEL_FILE).metadata["step"] == "2"
    assert "6 pictures at 32 px (6 with a second frame" in capsys.readouterr().err
    config, _ = parse_args(["--data", str(sprite_folder), "--init", str(out / MODEL_FILE), "--max-minutes", "12"])
    for name, value in DATA_RECIPE.items():
        if name != "steps":
            assert getattr(config, name) == value, name
    assert config.steps == UNBOUNDED_STEPS and config.max_minutes == 12 and config.decoder_warmup == DATA_DECODER_WARMUP
    assert (config.dim, config.levels, config.image_size) == (16, 4, 32)  # the checkpoint's shape
    # flags given win over the recipe; a folder without second frames trains without common fate
    assert parse_args(["--data", str(sprite_folder), "--lr", "1e-3"])[0].lr == 1e-3
    still = tmp_path / "still"
    shutil.copytree(sprite_folder / "images", still / "images")
    assert parse_args(["--data", str(still)])[0].motion_weight == 0
    assert main(["--data", str(still), "--motion-weight", "1", "--steps", "1", *small]) == 2
    assert "none of its 6 pictures has a second frame" in capsys.readouterr().err


def test_a_missing_folder_or_checkpoint_stops_with_a_message(tmp_path, capsys):
    assert main(["--data", str(tmp_path / "nowhere"), "--quiet", "--out", str(tmp_path)]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert main(["--init", str(tmp_path / "nothing.safetensors"), "--quiet", "--out", str(tmp_path)]) == 2
    assert "no such checkpoint" in capsys.readouterr().err


def test_max_minutes_stops_on_the_clock_and_saves(sprite_folder, tmp_path):
    trainer = Trainer(tiny(data=str(sprite_folder), steps=10_000, warmup=0, max_minutes=0.02, out=str(tmp_path)))
    trainer.fit()
    assert trainer.stopped_by_clock and 1 <= trainer.step < 10_000
    assert int(read_checkpoint(tmp_path / MODEL_FILE).metadata["step"]) == trainer.step
    # the next step was foreseen: the run ends within one step of its budget
    assert trainer.wall_seconds() < 1.2 + 2 * max(trainer._recent_steps)
    # the schedule followed the clock (10,000 steps alone would keep it at its peak)
    assert trainer.history[-1]["lr"] < learning_rate(trainer.config, trainer.step - 1)


def test_the_learning_rate_follows_the_clock_when_it_runs_ahead():
    config = tiny(steps=1000, warmup=0, lr=1.0)
    assert learning_rate(config, 10) > 0.99
    assert learning_rate(config, 10, clock_share=0.5) == pytest.approx(0.55)
    assert learning_rate(config, 10, clock_share=1.5) == pytest.approx(0.1)


def test_init_takes_a_glom_pytorch_state_dicts_shape(tmp_path):
    glom_pytorch = pytest.importorskip("glom_pytorch")
    torch.manual_seed(0)
    reference = glom_pytorch.Glom(dim=16, levels=3, image_size=32, patch_size=4)
    torch.save(reference.state_dict(), tmp_path / "theirs.pt")
    config, _ = parse_args(["--init", str(tmp_path / "theirs.pt"), "--consensus-radii", "none",
                            "--contribution-weights", "none", "--recon-level", "0", "--contrast-levels", "1,2",
                            "--contrast-radii", "1.5,3"])
    assert (config.dim, config.levels, config.image_size, config.patch_size) == (16, 3, 32, 4)
    trainer = Trainer(dataclasses.replace(config, steps=1, batch_size=2, iters=2, checkpoint_every=0))
    for name, tensor in reference.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name


def test_a_moved_view_shows_the_same_patches_and_shift_consistency_scores_what_moves_with_them():
    from glom_viz.train import draw_view_shifts, move_view, shift_consistency

    images = torch.rand(3, 3, 32, 32)
    shifts = torch.tensor([[1, 2], [-2, 0], [0, -1]])
    moved = move_view(images, shifts, 4)
    # the content moved by whole patches; what came in from outside repeats the border
    assert torch.equal(moved[0, :, 4:, 8:], images[0, :, :-4, :-8])
    assert torch.equal(moved[0, :, :4, 8:], images[0, :, :1, :-8].expand(-1, 4, -1))
    assert torch.equal(moved[1, :, :-8], images[1, :, 8:])
    # columns that are a function of their patch alone move with it: no cost; a position code costs
    patches = lambda x: rearrange(x, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=4, p2=4)
    assert shift_consistency(patches(images), patches(moved), shifts) == pytest.approx(0.0, abs=1e-6)
    position = torch.randn(1, 64, 48)
    assert shift_consistency(patches(images) + position, patches(moved) + position, shifts) > 0.05
    config = tiny(max_view_shift=2, shift_weight=1.0, batch_size=256)
    drawn = draw_view_shifts(config, 3)
    assert torch.equal(drawn, draw_view_shifts(config, 3)) and drawn.abs().max() <= 2
    assert (drawn != 0).any(-1).all() and len({tuple(d) for d in drawn.tolist()}) == 24


def test_carried_scenes_are_seen_as_their_second_frame_continuing_from_the_first():
    from glom_viz.scenes import make_moving_scene
    from glom_viz.train import draw_carried, groups_key

    trainer = Trainer(tiny(**MOTION, **SIMILARITY, carry_share=0.5, batch_size=8, scenes=6))
    carried = draw_carried(trainer.config, 0)
    assert 0 < carried.sum() < 8 and (carried == draw_carried(trainer.config, 0)).all()
    images, views, groups, extras = trainer.shard(0)
    before, shown = extras["before"]
    assert (shown.numpy() == carried).all()
    seeds, flips = batch_scenes(trainer.config, 0)
    for i in range(8):
        first, second = (torch.from_numpy(np.ascontiguousarray(f.image[:, ::-1] if flips[i] else f.image)).permute(2, 0, 1)
                         for f in make_moving_scene(int(seeds[i]), 32))
        assert torch.equal(images[i], second if carried[i] else first)
        # the groups are those of the frame seen, cached apart from the other frame's
        assert groups_key(trainer.config, ("motion", "similarity"), int(seeds[i]), bool(flips[i]), int(carried[i])) \
            in trainer._groups_cache
    # a carried scene's columns start from those settled on its (noisy) first frame, the others fresh
    start = trainer.learner.continued_from(before, shown, iters=3)
    with torch.no_grad():
        settled = trainer.model(before[shown], iters=3)
    torch.testing.assert_close(start[shown], settled)
    assert torch.equal(start[~shown], trainer.model.init_levels.detach().expand_as(start[~shown]))
    losses = trainer.compute_losses(0)
    assert torch.isfinite(losses["total"])
    # told to let go, carried columns let go where the clean frames differ, as Glom.let_go does it
    trainer = Trainer(tiny(**MOTION, **SIMILARITY, carry_share=0.5, carry_release=0.1, batch_size=8, scenes=6))
    images, views, groups, extras = trainer.shard(0)
    before, shown, first, second = extras["before"]
    assert torch.equal(second, images) and not torch.equal(first[shown], second[shown])
    start = trainer.learner.continued_from(before, shown, 3, (first, second))
    with torch.no_grad():
        let_go = trainer.model.let_go(trainer.model(before[shown], iters=3), first[shown], second[shown], 0.1)
    torch.testing.assert_close(start[shown], let_go)
    assert not torch.allclose(start[shown], trainer.learner.continued_from(before, shown, 3)[shown])
    assert torch.isfinite(trainer.compute_losses(0)["total"])
    # told its position at the start, a scene not carried starts from the model's starting state
    trainer = Trainer(tiny(**MOTION, **SIMILARITY, carry_share=0.5, start_position_levels=(1,), batch_size=8, scenes=6))
    images, views, groups, extras = trainer.shard(0)
    before, shown = extras["before"]
    start = trainer.learner.continued_from(before, shown, iters=3)
    assert torch.equal(start[~shown], trainer.model.starting_state().detach().expand_as(start[~shown]))
    assert not torch.equal(start[~shown][:, 0, 1], start[~shown][:, 1, 1])  # two columns, two positions
    assert torch.isfinite(trainer.compute_losses(0)["total"])
    # shift consistency enters the total at its weight, beside the other terms
    trainer = Trainer(tiny(**MOTION, carry_share=0.5, shift_weight=2.0, max_view_shift=2, steps=3))
    losses = trainer.compute_losses(0)
    assert losses["shift"] > 0
    torch.testing.assert_close(losses["total"], losses["reconstruction"] + 0.5 * losses["motion"] + 2.0 * losses["shift"])
    trainer.fit()
    assert all(math.isfinite(row["shift"]) for row in trainer.history)
