"""Several learner ranks end to end on CPU, laid out as on a cluster: the engines run apart
(the session's shared `s2l serve` engines, as an engine node would run them: two learner engines,
one explorer engine) and the trainer attaches to them through `rollout.<pool>.external_urls`.

- two torchrun agents (`--nnodes 2`, one rank each, rendezvous on 127.0.0.1) train the demo at TP 2,
  as two learner nodes would;
- `s2l train` with 2 local ranks at DP 2 with the distributed optimizer and token-budget
  micro-batches (engines of its own, started by rank 0; PP 2 on attached engines, on every sync
  transport: test_sync_pp_engines.py);
each completing its steps with the learner engines at weight version = step, and
- an attached server is checked: another model, another TP size, or a server that is not up are
  refused at start-up with the reason.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from served_fixtures import attach
from test_train_e2e import ROOT, finish, overrides, s2l

from megatron_s2l.net import find_free_port
from megatron_s2l.rollout.config import EngineConfig
from megatron_s2l.rollout.http import http_get_json
from megatron_s2l.rollout.server import ExternalServer
from megatron_s2l.run.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

STEPS = 2


def two_ranks(demo, root: Path, name: str, served: dict[str, list[str]] | None, *extra: str) -> list[str]:
    """Overrides of a 2-rank run of STEPS steps, attached to `served` (None: engines of its own)."""
    return [
        *overrides(demo, root, name),
        f"schedule.steps={STEPS}",
        "schedule.t_mix=2",
        "eval.every_steps=0",
        "checkpoint.every_steps=0",
        "learner.parallel.micro_batch_size=4",
        "ranks=2",
        *(attach(served) if served is not None else []),
        *extra,
    ]


def check_run(run_dir: Path, served: dict[str, list[str]] | None) -> None:
    records = read_metrics(run_dir)
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert any(r["schedule/g_learner"] for r in records)  # the learner engine generated too
    for r in records:
        # Attached engines are synced to the learner (version 0) before step 1.
        if r["schedule/g_learner"]:
            assert r["rollout/learner_weight_version"] == str(r["step"] - 1)
        assert r["weight_version"] == r["step"] and r["rollout/stale_learner_samples"] == 0
        assert math.isfinite(r["loss/total"]) and math.isfinite(r["train/grad_norm"])
    if served is None:
        return
    for url in served["learner"]:
        assert http_get_json(url + "/model_info")["weight_version"] == str(STEPS)
    for url in served["explorer"]:
        assert http_get_json(url + "/model_info")["weight_version"] == "default"  # never synced


def test_two_torchrun_nodes_at_tp2_train_with_attached_engines(demo, served, tmp_path: Path) -> None:
    port = find_free_port()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc-per-node",
        "1",
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"127.0.0.1:{port}",
        "--rdzv-id",
        "two-node-test",
        "-m",
        "megatron_s2l",
        "train",
        "--config",
        "yaml/demo-cpu.yaml",
        *two_ranks(demo, tmp_path, "tp2", served, "learner.parallel.tensor_parallel=2"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [
        subprocess.Popen(
            [*cmd[:3], "--node-rank", str(rank), *cmd[3:]],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank in range(2)
    ]
    outputs = [finish(node, timeout=900) for node in nodes]
    assert any("learner ranks 2 = TP 2 x PP 1 x DP 1" in out for out in outputs)
    check_run(tmp_path / "tp2", served)


def test_two_local_ranks_at_dp2_with_token_budgets_and_their_own_engines(demo, tmp_path: Path) -> None:
    extra = ["learner.parallel.distributed_optimizer=true", "learner.parallel.max_tokens_per_micro_batch=64"]
    out = finish(
        s2l("train", "--config", "yaml/demo-cpu.yaml", *two_ranks(demo, tmp_path, "dp2", None, *extra))
    )
    assert "learner ranks 2 = TP 1 x PP 1 x DP 2" in out and "micro-batches of up to 64 tokens" in out
    check_run(tmp_path / "dp2", None)
    # 4 rows per DP rank: between one micro-batch for all and one per row, the same count on both ranks.
    assert all(1 <= r["train/micro_batches"] <= 4 for r in read_metrics(tmp_path / "dp2"))


def test_attached_servers_are_checked(demo, served) -> None:
    engine = EngineConfig(startup_timeout_s=2.0)
    learner, explorer = served["learner"][0], served["explorer"][0]
    ExternalServer(learner, demo.learner_dir, engine, "learner0").start()  # the right one
    with pytest.raises(ValueError, match=r"serves .* not .*are two pools' URLs swapped"):
        ExternalServer(explorer, demo.learner_dir, engine, "learner0").start()
    with pytest.raises(ValueError, match=r"runs at TP 1, the config says engine\.tp = 2"):
        ExternalServer(learner, demo.learner_dir, EngineConfig(tp=2), "learner0").start()
    with pytest.raises(TimeoutError, match="no healthy server"):
        ExternalServer(f"http://127.0.0.1:{find_free_port()}", demo.learner_dir, engine, "x").start()
