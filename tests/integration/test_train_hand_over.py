"""The explorer's hand-over after T_mix end to end on the demo models, with engines of the run's own
(the hand-over stops and starts them, so not the shared `served` ones):

    s2l train --config yaml/demo-cpu.yaml schedule.t_mix=3 schedule.steps=4 eval.every_steps=0 \\
        rollout.explorer_hand_over=true ...

Steps 1-2 carry explorer samples (G_w = 4, 2; G_w reaches 0 at step T_mix = 3), so after step 2 the
explorer engine is stopped and a second learner engine starts on its core, synced to the weights
after step 2, and serves step 3's rollout. The run is killed after step 3's checkpoint and resumed:
the resumed run starts no explorer engine and two learner engines.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from test_train_e2e import finish, kill_trainer, overrides, s2l, sglang_servers_of, wait_for_phase

from megatron_s2l.algo import s2l_split
from megatron_s2l.run.metrics import read_metrics

# Servers of its own: it runs beside the shared engines' tests, to even out the two server workers.
pytestmark = [pytest.mark.slow, pytest.mark.sglang, pytest.mark.server_group("sglang-served")]

T_MIX, STEPS, GROUP = 3, 4, 4
GENERATE = '"POST /generate HTTP/1.1" 200'
READY = "The server is fired up and ready to roll!"  # after its one warm-up /generate


def engines_of(model_dir: Path) -> set[int]:
    """Process groups of live SGLang servers of `model_dir`: one per engine (its helpers share it)."""
    groups = set()
    for pid in sglang_servers_of(model_dir):
        try:
            groups.add(os.getpgid(pid))
        except ProcessLookupError:
            continue
    return groups


def test_explorer_engine_becomes_a_learner_engine_after_t_mix_and_a_resume_starts_so(
    demo, tmp_path: Path
) -> None:
    run_dir = tmp_path / "handover"
    args = [
        *overrides(demo, tmp_path, "handover"),
        f"schedule.t_mix={T_MIX}",
        f"schedule.steps={STEPS}",
        "eval.every_steps=0",
        "rollout.explorer_hand_over=true",  # the demo's config turns it off (see its comment)
        "checkpoint.every_steps=1",
        # Requests of 2 samples: the client spreads a step's 8 learner samples over both engines.
        "rollout.client.batch_size=2",
    ]
    assert [s2l_split(step, T_MIX, GROUP)[0] for step in range(1, STEPS + 1)] == [4, 2, 0, 0]
    proc = s2l("train", "--config", "yaml/demo-cpu.yaml", *args)
    wait_for_phase(proc, run_dir, (2, "rollout"))
    assert len(engines_of(demo.explorer_dir)) == 1 and len(engines_of(demo.learner_dir)) == 1
    wait_for_phase(proc, run_dir, (3, "rollout"))  # after the hand-over (phase "hand-over" of step 3)
    assert not sglang_servers_of(demo.explorer_dir), "the explorer engine outlived the hand-over"
    assert len(engines_of(demo.learner_dir)) == 2
    wait_for_phase(proc, run_dir, (4, "rollout"))  # step 3 is logged and checkpointed
    kill_trainer(proc, demo.learner_dir)  # the added engine dies with the trainer too

    records = {r["step"]: r for r in read_metrics(run_dir)}
    assert sorted(records) == [1, 2, 3]
    for step, r in records.items():
        handed_over = step > T_MIX - 1
        assert r["rollout/learner_engines"] == (2 if handed_over else 1), step
        assert r["rollout/explorer_engines"] == (0 if handed_over else 1), step
        assert ("time/hand_over" in r) == (step == T_MIX), step
        assert r["rollout/explorer_samples"] == 2 * s2l_split(step, T_MIX, GROUP)[0]
    # Every learner sample of step 3, the new engine's too, came from the weights after step 2.
    assert records[3]["rollout/learner_weight_version"] == "2"
    assert records[3]["rollout/stale_learner_samples"] == 0
    # The new engine (learner1) served part of step 3's rollout (after SGLang's warm-up request).
    log = (run_dir / "engine-logs" / "learner1.log").read_text()
    assert log.split(READY, 1)[1].count(GENERATE) >= 1

    proc = s2l("train", "--resume", str(run_dir))
    wait_for_phase(proc, run_dir, (4, "train"))
    assert not sglang_servers_of(demo.explorer_dir), "the resumed run started an explorer engine"
    assert len(engines_of(demo.learner_dir)) == 2
    out = finish(proc)
    assert "learner engines: 2 x TP 1" in out and "explorer engines:" not in out, out[-3000:]
    last = read_metrics(run_dir)[-1]
    assert last["step"] == STEPS and last["rollout/learner_weight_version"] == str(STEPS - 1)
    assert (last["rollout/learner_engines"], last["rollout/explorer_engines"]) == (2, 0)
    assert last["rollout/stale_learner_samples"] == 0 and "time/hand_over" not in last
