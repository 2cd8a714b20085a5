"""Replay the shipped model's eleven stages on a CPU alone, from the commands shipped.json records.

Stage 1 is `shipped.json["command"]`, stages 2-11 are `shipped.json["fine_tune"][i]["command"]`. Each
runs with `--device cpu`, from the previous stage's model, with the trainer's own micro-batches, threads and
precision for this machine (or on `--processes` data-parallel processes, torchrun), keeping every scene's
motion and similarity groups in `<runs>/groups` so that later stages with the same group settings find
them once; it stops at the step the shipped stage stopped at (`--stop-at`), so no checkpoint is chosen on
validation. Rerun the same command to go on: a finished stage is skipped, a stopped one resumes.

    python experiments/replay_cpu.py --runs runs/replay                 # all eleven stages
    python experiments/replay_cpu.py --runs runs/replay --print         # the commands, nothing run
    python experiments/replay_cpu.py --runs runs/replay --first-stage 2 --init runs/replay/s1/model.safetensors

Stage k's run is `<runs>/s<k>`; its `model.safetensors` is stage k's model. `<runs>/timings.jsonl` gets a line
per stage run: the steps it ran, its wall and CPU seconds and the load average.
"""

import argparse
import json
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

from glom_viz.checkpoints import read_checkpoint
from glom_viz.train import MODEL_FILE, TRAINER_FILE, parse_args

SHIPPED = Path(__file__).resolve().with_name("shipped.json")  # its recipe, stage by stage
TIMINGS_FILE = "timings.jsonl"  # one line per stage run: steps, wall and CPU seconds, load average
SET_HERE = ("--init", "--out", "--device", "--accumulate", "--threads", "--groups-cache")  # the replay's own


def recorded_stages(shipped: dict) -> list[tuple[list[str], int]]:
    """(the trainer's flags, the step the stage stopped at) for stages 1-11, as shipped.json records them."""
    stages = [(shipped["command"], shipped["steps"])]
    stages += [(stage["command"], stage["steps"]) for stage in shipped["fine_tune"]]
    flags = []
    for command, steps in stages:
        words = shlex.split(re.sub(r"<[^>]*>", "MODEL", command))  # "<stage 5 model>": one word
        words = words[words.index("glom_viz.train") + 1:]  # past "OMP_NUM_THREADS=1 python -m"
        kept = []
        for name, value in zip(words[::2], words[1::2]):
            if not name.startswith("--"):
                raise ValueError(f"cannot read the recorded command {command!r} near {name!r}")
            if name not in SET_HERE:
                kept += [name, value]
        flags.append((kept, int(steps)))
    return flags


def plan(runs: Path, processes: int, first_stage: int = 1, init: str | None = None) -> list[dict]:
    """One entry per stage from first_stage on: its number, output folder, stop step and trainer flags."""
    shipped = json.loads(SHIPPED.read_text())
    entries = []
    previous = init
    for number, (flags, stop) in enumerate(recorded_stages(shipped), start=1):
        out = runs / f"s{number}"
        if number >= first_stage:
            parse_args(flags)  # the recorded flags must still be the trainer's
            own = ["--device", "cpu", "--groups-cache", str(runs / "groups"), "--out", str(out)]
            if previous is not None:
                own = ["--init", previous] + own
            entries.append({"stage": number, "out": out, "stop": stop, "flags": flags + own})
        previous = str(out / MODEL_FILE)
    return entries


def step_of(run: Path) -> int:
    """The step of the run's last checkpoint, 0 where it has none."""
    model = run / MODEL_FILE
    return int(read_checkpoint(model).metadata.get("step", 0)) if model.exists() else 0


def command(entry: dict, processes: int, resume: bool) -> list[str]:
    flags = ["--resume", "--out", str(entry["out"])] if resume else entry["flags"]
    launcher = ([sys.executable, "-m"] if processes == 1 else
                ["torchrun", "--standalone", f"--nproc_per_node={processes}", "-m"])
    return launcher + ["glom_viz.train", *flags, "--stop-at", str(entry["stop"]), "--quiet"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/replay", help="a folder for the stages' runs (s1 ... s11)")
    parser.add_argument("--processes", type=int, default=1,
                        help="data-parallel processes (default one: the trainer runs micro-batches on every core)")
    parser.add_argument("--first-stage", type=int, default=1, help="start at this stage (1-11)")
    parser.add_argument("--init", help="the model to start --first-stage from (default: the previous stage's run)")
    parser.add_argument("--print", action="store_true", help="print the commands and run nothing")
    args = parser.parse_args(argv)
    entries = plan(Path(args.runs), args.processes, args.first_stage, args.init)
    if not entries:
        parser.error(f"there is no stage {args.first_stage}: stages run from 1 to 11")
    for entry in entries:
        done = step_of(entry["out"])
        if done >= entry["stop"]:
            print(f"stage {entry['stage']}: done (step {done})")
            continue
        resume = (entry["out"] / TRAINER_FILE).exists()
        line = command(entry, args.processes, resume)
        print(f"stage {entry['stage']}: {shlex.join(line)}", flush=True)
        if args.print:
            continue
        wall, cpu = time.perf_counter(), children_cpu_seconds()
        returncode = subprocess.run(line).returncode
        wall, cpu = time.perf_counter() - wall, children_cpu_seconds() - cpu
        # the machine may be shared: CPU time beside wall time, and the load the stage ran under
        with open(Path(args.runs) / TIMINGS_FILE, "a") as timings:
            timings.write(json.dumps({"stage": entry["stage"], "from_step": done, "to_step": step_of(entry["out"]),
                                      "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
                                      "load_average": os.getloadavg()[0]}) + "\n")
        print(f"stage {entry['stage']}: steps {done}-{step_of(entry['out'])} in {wall:.0f} s wall, {cpu:.0f} s CPU",
              flush=True)
        if returncode or step_of(entry["out"]) < entry["stop"]:
            print(f"stage {entry['stage']} stopped before step {entry['stop']}", file=sys.stderr)
            return 1
    return 0


def children_cpu_seconds() -> float:
    """User and system CPU seconds of the finished child processes (the stages) so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    sys.exit(main())
