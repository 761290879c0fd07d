"""A two-node job on one machine, as `s2l launch --node-rank K` runs it on each node of a SLURM job
(hosts `localhost` and `127.0.0.1`: node 0 the learner under torchrun, node 1 the engines under
`s2l serve`, started by the job itself, not the session's shared ones):

- SIGTERM to every node (SLURM's warning before the time limit) mid-run: the trainer finishes its
  step, checkpoints, and every process of the job ends; the learner node exits 75;
- `s2l launch --resume RUN_DIR` (a requeued job) continues from the next step to the end: every step
  is logged once, and every process of the job is gone within 60 s of the last step;
- a trainer that fails takes the engine node down with it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train_e2e import ROOT, overrides

from megatron_s2l.net import find_free_port
from megatron_s2l.run.metrics import read_metrics

# Servers of its own: it runs beside the shared engines' tests, to even out the two server workers.
pytestmark = [pytest.mark.slow, pytest.mark.sglang, pytest.mark.server_group("sglang-served")]

STEPS = 3
HOSTS = "localhost,127.0.0.1"


def job_overrides(demo, root: Path, name: str) -> list[str]:
    return [
        *overrides(demo, root, name),
        f"schedule.steps={STEPS}",
        "schedule.t_mix=0",  # one engine (learner): a second one would take the port after it
        "eval.every_steps=0",
        "checkpoint.every_steps=0",  # the SIGTERM checkpoint is the only one before the last step
        "learner.parallel.micro_batch_size=4",
        "rollout.learner_sampling.max_new_tokens=8",
        "rollout.explorer_sampling.max_new_tokens=8",
        "ranks=2",  # two SPMD ranks must agree on the step they stop after
    ]


def launch_nodes(source: list[str], cwd: Path) -> list[subprocess.Popen]:
    """Both nodes' `s2l launch --node-rank K` (engine node first, as SLURM starts them together)."""
    ports = [
        "--rdzv-port",
        str(find_free_port()),
        "--engine-port",
        str(find_free_port()),
        "--control-port",
        str(find_free_port()),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "S2L_ENGINE_API_KEY": "lifecycle-test-key"}
    cmd = [str(Path(sys.executable).parent / "s2l"), "launch", *source, "--hosts", HOSTS, *ports]
    return [
        subprocess.Popen(
            [*cmd, "--engine-wait-s", "600", "--node-rank", str(rank)],
            cwd=cwd,
            env=env,
            stdout=open(cwd / f"node{rank}.log", "a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for rank in (1, 0)
    ]


def job_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (the run's directory or a model's)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if marker in cmdline and state != "Z" and int(entry) != os.getpid():
            found.append(f"{entry}: {cmdline[:200]}")
    return found


def logged_steps(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir)] if (run_dir / "metrics.jsonl").exists() else []


def wait_all(nodes: list[subprocess.Popen], deadline: float) -> list[int | None]:
    for node in nodes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=max(deadline - time.monotonic(), 0.1))
    return [node.poll() for node in nodes]


def kill_all(nodes: list[subprocess.Popen]) -> None:
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
            node.wait()


def logs(cwd: Path) -> str:
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(cwd.glob("node*.log")))


def test_sigterm_checkpoints_and_a_resumed_job_ends_every_process(demo, tmp_path: Path) -> None:
    run_dir = tmp_path / "job"
    markers = [str(run_dir), str(demo.learner_dir)]
    config = str(ROOT / "yaml/demo-cpu.yaml")
    nodes = launch_nodes(["--config", config, *job_overrides(demo, tmp_path, "job")], tmp_path)
    try:
        deadline = time.monotonic() + 900
        while logged_steps(run_dir) != [1]:  # SIGTERM while step 2 runs
            assert all(n.poll() is None for n in nodes) and time.monotonic() < deadline, logs(tmp_path)
            time.sleep(0.5)
        for node in nodes:  # as srun passes the batch shell's SIGTERM on to every task
            node.send_signal(signal.SIGTERM)
        engine_status, learner_status = wait_all(nodes, time.monotonic() + 300)
    finally:
        kill_all(nodes)
    assert (learner_status, engine_status) == (75, 0), logs(tmp_path)
    assert "stopping after step 2 (SIGTERM)" in logs(tmp_path)
    assert logged_steps(run_dir) == [1, 2]
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000002"  # written by the stop
    assert not any(job_processes(m) for m in markers), [job_processes(m) for m in markers]

    nodes = launch_nodes(["--resume", str(run_dir)], tmp_path)
    try:
        deadline = time.monotonic() + 900
        while logged_steps(run_dir)[-1:] != [STEPS]:
            assert all(n.poll() is None for n in nodes) and time.monotonic() < deadline, logs(tmp_path)
            time.sleep(0.5)
        last_step_at = time.monotonic()
        statuses = wait_all(nodes, last_step_at + 60)
        # Every process of the job, the SGLang servers and the trainer's ranks included, ends within
        # 60 s of the last step (the final checkpoint being part of it).
        while any(job_processes(m) for m in markers) and time.monotonic() < last_step_at + 60:
            time.sleep(0.5)
        leftover = [job_processes(m) for m in markers]
    finally:
        kill_all(nodes)
    assert statuses == [0, 0], logs(tmp_path)
    assert not any(leftover), leftover
    assert logged_steps(run_dir) == [1, 2, 3]  # each step once
    assert (run_dir / "checkpoints" / "latest").read_text() == "step_000003"


def test_a_failed_trainer_takes_the_engine_node_down(demo, tmp_path: Path) -> None:
    # The trainer refuses the run at start-up (after the engines are up): a failure like any other.
    bad = [*job_overrides(demo, tmp_path, "bad"), f"data.train_files=[{tmp_path}/missing.jsonl]"]
    nodes = launch_nodes(["--config", str(ROOT / "yaml/demo-cpu.yaml"), *bad], tmp_path)
    try:
        engine_status, learner_status = wait_all(nodes, time.monotonic() + 900)
    finally:
        kill_all(nodes)
    assert learner_status not in (0, None) and engine_status == 0, logs(tmp_path)
    assert "shutdown http://127.0.0.1" in logs(tmp_path)
    assert not job_processes(str(demo.learner_dir)) and not job_processes(str(demo.explorer_dir))
