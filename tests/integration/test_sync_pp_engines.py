"""`s2l train` with two pipeline stages and two learner engines completes on every sync transport
(two stages sending into the same engines at once could deadlock: the stages take turns), and
nothing the trainer opens listens on all interfaces (its stores are bound to 127.0.0.1 on one node).

One run per transport: 2 local ranks (PP 2) attached to the session's shared engines (two learner
engines, one explorer engine, as an engine node serves them), 2 steps, eval off, the demo models at
test size."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from served_fixtures import attach
from test_train_e2e import ROOT, overrides

from megatron_s2l.rollout.http import http_get_json
from megatron_s2l.run.metrics import read_metrics

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

STEPS = 2


def _overrides(demo, run_root: Path, name: str, transport: str) -> list[str]:
    """A 2-rank PP 2 run of STEPS steps on `transport` (attached with `attach(served)`)."""
    return [
        *overrides(demo, run_root, name),  # later keys win
        f"schedule.steps={STEPS}",
        "schedule.t_mix=2",
        "schedule.group_size=2",
        "ranks=2",
        "learner.parallel.pipeline_parallel=2",
        "learner.parallel.micro_batch_size=4",
        f"sync.transport={transport}",
        "checkpoint.every_steps=0",
        "eval.every_steps=0",
        "rollout.learner_sampling.max_new_tokens=8",
        "rollout.explorer_sampling.max_new_tokens=8",
    ]


def _listeners_of_session(session: int) -> set[str]:
    """`address:port` of every listening TCP socket owned by a process of `session` (the trainer and
    its ranks; the SGLang servers run in sessions of their own)."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    found = set()
    for line in out.splitlines():
        fields = line.split()
        if "pid=" not in line:
            continue
        for part in line.split("pid=")[1:]:
            pid = int(part.split(",")[0])
            try:
                if os.getsid(pid) == session:
                    found.add(fields[3])
            except ProcessLookupError:
                pass
    return found


@pytest.mark.parametrize("transport", ["disk", "tensor", "distributed"])
def test_two_stages_into_two_engines_on_every_transport(demo, served, tmp_path: Path, transport: str) -> None:
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "s2l"),
            "train",
            "--config",
            "yaml/demo-cpu.yaml",
            *_overrides(demo, tmp_path, "pp", transport),
            *attach(served),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    listeners: set[str] = set()
    done = threading.Event()

    def watch() -> None:  # the stores exist only while the run does: sample all along
        while not done.is_set():
            listeners.update(_listeners_of_session(proc.pid))
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        done.set()
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    watcher.join(10)
    assert proc.returncode == 0, out[-4000:]

    assert f"step {STEPS}/{STEPS}" in out
    assert "learner ranks 2 = TP 1 x PP 2 x DP 1" in out
    records = read_metrics(tmp_path / "pp")
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert any(r["schedule/g_learner"] for r in records)  # the learner engines generated too
    for r in records:
        assert r["sync/missed_engines"] == 0 and r["weight_version"] == r["step"]
        if r["schedule/g_learner"]:  # attached engines are synced to the learner (version 0) first
            assert r["rollout/learner_weight_version"] == str(r["step"] - 1)
    assert len(served["learner"]) == 2
    for url in served["learner"]:  # both engines got both stages' weights
        assert http_get_json(url + "/model_info")["weight_version"] == str(STEPS)
    for url in served["explorer"]:
        assert http_get_json(url + "/model_info")["weight_version"] == "default"  # never synced

    assert listeners, "the watcher saw no listening socket of the trainer (a store must exist)"
    wildcard = {address for address in listeners if address.rsplit(":", 1)[0] in ("0.0.0.0", "*", "[::]")}
    assert not wildcard, f"{transport}: the trainer listens on all interfaces at {sorted(wildcard)}"
