"""`rollout.overlap: 1` end to end on the demo models, attached to the shared engines: every step's
learner samples come from the weights one step before the step's (the rollout was generated while
the step before trained), TIS is logged, and a run stopped by SIGTERM with the next rollout already
generated resumes by drawing the same prompts and generating them again from the checkpoint's
weights, every step logged once (that run also evaluates, after each sync, with nothing in flight).

    s2l train --config yaml/demo-cpu.yaml rollout.overlap=1 schedule.steps=4 schedule.t_mix=2 \\
        eval.every_steps=0 algo.rollout_correction=tis
"""

from __future__ import annotations

import json
import math
import signal
import time
from pathlib import Path

import pytest
from served_fixtures import attach
from test_train_alternating import logged_steps
from test_train_e2e import _logged_steps, finish, overrides, s2l

from megatron_s2l.run.checkpoint import completed_step, latest_checkpoint
from megatron_s2l.run.metrics import read_metrics
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.stop import STOPPED_EXIT_CODE

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

STEPS = 4
OVERLAP = [
    "rollout.overlap=1",
    f"schedule.steps={STEPS}",
    "schedule.t_mix=2",  # step 1: explorer samples only; steps 2-4: learner samples only
    "eval.every_steps=0",
    "algo.rollout_correction=tis",
    "checkpoint.every_steps=0",  # only the SIGTERM checkpoint before the last step
    # The demo models answer every prompt wrong in 12 tokens (zero advantages): the entropy bonus
    # moves the weights every step all the same, so one-step-stale samples have log-probs that differ.
    "algo.loss.entropy_coef=0.05",
    "learner.optimizer.lr=1.0e-3",  # and far enough that the gap stands well above float noise
]


def step_prompts(run_dir: Path, step: int) -> set[str]:
    """The prompt ids of a step's dumped learner samples (`logging.dump_samples`)."""
    path = RunDir(run_dir).samples / f"step_{step:06d}.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {row["prompt_id"] for row in rows if row["source"] == "learner"}


def check_overlapped(records: list[dict]) -> None:
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert "rollout/staleness_max" not in records[0]  # no learner samples at step 1
    for r in records[1:]:
        # Generated while the step before trained: from the weights after step - 2 (attached
        # engines are synced to version 0 at the start).
        assert r["rollout/learner_weight_version"] == str(r["step"] - 2)
        assert r["rollout/staleness_max"] == 1 and r["rollout/staleness_mean"] == 1
        assert math.isfinite(r["train/tis_mean"]) and 0 < r["train/tis_mean"] <= 2.0
        assert 0 <= r["train/tis_clipped_frac"] <= 1
        # Sampled by the weights before the previous update: the engine's log-probs are not the
        # learner's (on-policy they agree to ~1e-7 on CPU, exactly after a resume), and the weights
        # correct for it.
        assert abs(r["mismatch/engine_minus_learner_logprob"]) > 1e-6
        assert abs(r["train/tis_mean"] - 1) > 1e-6
        assert math.isfinite(r["loss/total"]) and r["train/skipped"] == 0


def test_overlapped_run_then_sigterm_with_a_rollout_in_flight_and_resume(
    demo, served, tmp_path: Path
) -> None:
    args = ["train", "--config", "yaml/demo-cpu.yaml", *overrides(demo, tmp_path, "overlap"), *attach(served)]
    full_dir = tmp_path / "overlap"
    finish(s2l(*args, *OVERLAP))
    full = read_metrics(full_dir)
    check_overlapped(full)
    assert logged_steps(full_dir) == [1, 2, 3, 4]

    # Evaluated every 2 steps too: after the sync, on the engines the next rollout was generated on.
    proc = s2l(*[a.replace("name=overlap", "name=stopped") for a in args], *OVERLAP, "eval.every_steps=2")
    run_dir = tmp_path / "stopped"
    deadline = time.monotonic() + 600
    while 1 not in _logged_steps(run_dir):  # SIGTERM during step 2 (or 3, if step 2 ends first)
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "step 1 never logged"
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == STOPPED_EXIT_CODE, out[-4000:]
    stopped = completed_step(latest_checkpoint(RunDir(run_dir).checkpoints))
    assert stopped in (2, 3), out[-4000:]  # the next step's rollout had been generated, not used

    finish(s2l("train", "--resume", str(run_dir)))
    assert logged_steps(run_dir) == [0, 1, 2, 3, 4]  # each step once (0: the evaluation before step 1)
    resumed = [r for r in read_metrics(run_dir) if r["step"] > 0]
    after = resumed[stopped]  # the first step after the checkpoint
    # Its rollout was dropped and generated again: the same prompts (the sampler state from before
    # the early draw), now from the checkpoint's weights, so on-policy.
    assert step_prompts(run_dir, stopped + 1) == step_prompts(full_dir, stopped + 1)
    assert after["data/position"] == full[stopped]["data/position"]
    assert after["rollout/learner_weight_version"] == str(stopped)
    assert after["rollout/staleness_max"] == 0
    assert abs(after["mismatch/engine_minus_learner_logprob"]) < 1e-5 and after[
        "train/tis_mean"
    ] == pytest.approx(1, abs=1e-5)
    for r in resumed[stopped + 1 :]:  # then overlapped again
        assert r["rollout/staleness_max"] == 1 and r["rollout/learner_weight_version"] == str(r["step"] - 2)
    assert [r["data/position"] for r in resumed] == [r["data/position"] for r in full]
    evaluated = [r["step"] for r in resumed if "eval/avg_at_k" in r]
    assert evaluated == [2, 4] and all(math.isfinite(r["eval/avg_at_k"]) for r in resumed[1::2])
