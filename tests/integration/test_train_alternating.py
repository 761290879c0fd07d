"""`schedule.mode: alternating` end to end on the demo models, attached to the shared engines: the
issue's acceptance run (both counts rounded up, explorer mini-batches that count samples) logs the
counts worked out by hand, then the same run is SIGKILLed between the two half-steps of step 2 and
resumed from the checkpoint saved there: every step logged once, with the same counts, and the
explorer half of step 2 not run again.

    s2l train --config yaml/demo-cpu.yaml schedule.mode=alternating schedule.rounding=ceil-both \\
        algo.explorer_mini_batch=samples schedule.t_mix=4 schedule.steps=3 \\
        schedule.prompts_per_step=8 algo.ppo_mini_batch_prompts=4 eval.every_steps=0
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from signal import SIGKILL

import pytest
from served_fixtures import attach
from test_train_e2e import finish, overrides, s2l

from megatron_s2l.run.metrics import read_metrics
from megatron_s2l.run.phases import read_status
from megatron_s2l.run.rundir import RunDir

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

ACCEPTANCE = [
    "schedule.mode=alternating",
    "schedule.rounding=ceil-both",
    "algo.explorer_mini_batch=samples",
    "schedule.t_mix=4",
    "schedule.steps=3",
    "schedule.group_size=8",
    "schedule.prompts_per_step=8",
    "algo.ppo_mini_batch_prompts=4",
    "eval.every_steps=0",
    "learner.parallel.micro_batch_size=128",  # yaml/demo-cpu.yaml's own (the e2e overrides set 8)
    "checkpoint.every_steps=2",  # a checkpoint between the half-steps of step 2, and after it
]
# Step 1: G_w = 8, G_s = 0 (explorer half only); step 2: alpha 2/3, G_w = ceil(16/3) = 6, G_s =
# ceil(8/3) = 3; step 3: alpha 1/3, G_w = 3, G_s = 6. Explorer updates: 8 prompts x G_w / 4 samples;
# learner updates: 8 prompts / 4 prompts. One batch of 8 prompts per half-step.
EXPECTED = {
    "train/updates": [16, 14, 8],
    "train/updates_explorer": [16, 12, 6],
    "rollout/explorer_samples": [64, 48, 24],
    "rollout/learner_samples": [0, 24, 48],
    "schedule/g_explorer": [8, 6, 3],
    "schedule/g_learner": [0, 3, 6],
    "data/position": [8, 24, 40],
}


def logged_steps(run_dir: Path) -> list[int]:
    """Every record's step, repeats included (read_metrics keeps the last record of each step)."""
    lines = RunDir(run_dir).metrics_file.read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if line.strip()]


def check_counts(records: list[dict]) -> None:
    assert [r["step"] for r in records] == [1, 2, 3]
    for key, values in EXPECTED.items():
        assert [r[key] for r in records] == values, key
    for r in records:  # pure groups: each source's advantages are relative to itself
        assert abs(r["adv/explorer_mean"]) < 1e-6
        assert r["train/skipped"] == 0
    for r in records[1:]:
        assert abs(r["adv/learner_mean"]) < 1e-6
        # The learner half samples from the weights after the explorer half of the same step.
        assert r["rollout/learner_weight_version"] == f"{r['step']}-explorer"
        assert r["rollout/explorer_weight_version"] == "default"


def wait_for_checkpoint(proc, run_dir: Path, name: str) -> None:
    deadline = time.monotonic() + 600
    latest = run_dir / "checkpoints" / "latest"
    while not (latest.is_file() and latest.read_text() == name):
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"never saved {name}"
        time.sleep(0.005)


def test_acceptance_run_then_kill_between_half_steps_and_resume(demo, served, tmp_path: Path) -> None:
    args = ["train", "--config", "yaml/demo-cpu.yaml", *overrides(demo, tmp_path, "alt"), *attach(served)]
    out = finish(s2l(*args, *ACCEPTANCE))
    assert "alternating mixing steps, ceil-both rounding" in out
    full = read_metrics(tmp_path / "alt")
    check_counts(full)
    assert logged_steps(tmp_path / "alt") == [1, 2, 3]
    checkpoints = tmp_path / "alt" / "checkpoints"
    assert sorted(p.name for p in checkpoints.glob("step_*")) == ["step_000002", "step_000003"]

    proc = s2l(*[a.replace("name=alt", "name=killed") for a in args], *ACCEPTANCE)
    run_dir = tmp_path / "killed"
    wait_for_checkpoint(proc, run_dir, "step_000002_explorer")
    os.killpg(proc.pid, SIGKILL)
    proc.communicate(timeout=60)
    status = read_status(run_dir / "status.json")
    assert status["step"] == 2 and status["phase"] != "rollout-explorer", status
    assert logged_steps(run_dir) == [1]

    out = finish(s2l("train", "--resume", str(run_dir)))
    assert f"resuming from {run_dir / 'checkpoints' / 'step_000002_explorer'} (after step 1)" in out
    resumed = read_metrics(run_dir)
    check_counts(resumed)
    assert logged_steps(run_dir) == [1, 2, 3]  # each step once
    # The explorer half of step 2 comes from the checkpoint, the rest ran after the resume; the data
    # order is the uninterrupted run's.
    assert (
        resumed[1]["train/updates_explorer"] == 12 and resumed[1]["data/position"] == full[1]["data/position"]
    )
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000003"
    assert not list((run_dir / "checkpoints").glob("*_explorer"))  # superseded, pruned
