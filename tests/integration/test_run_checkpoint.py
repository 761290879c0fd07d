"""Run checkpoints under faults, on two gloo ranks (DP=2, distributed optimizer): a truncated rank
file in the newest checkpoint is reported and the previous one is restored (on both ranks, no
hang); a disk that fills up during a write (a file-size limit) fails the save on every rank and
leaves the previous checkpoint intact; when no checkpoint loads, the error names the files."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from distributed_utils import run_ranks
from test_learner_train_step import grpo_batch

pytestmark = pytest.mark.slow


def _rank_body(rank: int, world_size: int, hf_dir: str, root: str) -> dict:
    import resource

    from megatron_s2l.learner.checkpoint import CheckpointError
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig
    from megatron_s2l.run.checkpoint import latest_checkpoint, load_latest_run_checkpoint, save_run_checkpoint

    cfg = LearnerConfig(
        parallel=ParallelConfig(micro_batch_size=1, distributed_optimizer=True),
        optimizer=OptimizerConfig(lr=1e-3),
        vocab_pad_multiple=48,
    )
    checkpoints = Path(root) / "checkpoints"
    learner = Learner.from_hf(cfg, hf_dir)
    batch = grpo_batch(learner.arch.vocab_size)
    batch.old_logprobs = learner.compute_logprobs(batch)
    weights = {}
    for step in (1, 2):
        learner.train_step(batch)
        save_run_checkpoint(checkpoints, step, learner, {"driver": {"position": step}}, keep_last=2)
        weights[step] = {n: t.clone() for n, t in learner.iter_hf_weights()}
    out: dict = {}

    # The disk fills up during the step-3 write: rank 1 hits a file-size limit (SIGXFSZ ignored, so
    # the write fails with EFBIG as on a full disk).
    learner.train_step(batch)
    if rank == 1:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
    try:
        save_run_checkpoint(checkpoints, 3, learner, {"driver": {"position": 3}}, keep_last=2)
        out["disk_full"] = "saved"
    except CheckpointError as error:
        out["disk_full"] = str(error)
    if rank == 1:
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    out["latest_after_disk_full"] = latest_checkpoint(checkpoints).name

    # Rank 1's file of the newest checkpoint (step 2) is truncated: both ranks fall back to step 1.
    if rank == 1:
        rank_file = next((checkpoints / "step_000002" / "learner").glob("rank_*dp1.pt"))
        rank_file.write_bytes(rank_file.read_bytes()[:1000])
    resumed = Learner.from_hf(cfg, hf_dir)
    loop = load_latest_run_checkpoint(checkpoints, resumed)
    out["resumed_step"], out["resumed_position"] = loop["step"], loop["driver"]["position"]
    restored = dict(resumed.iter_hf_weights())
    out["equals_step_1"] = all(restored[n].equal(t) for n, t in weights[1].items())
    out["differs_from_step_2"] = any(not restored[n].equal(t) for n, t in weights[2].items())

    # Every checkpoint broken: a clear error on every rank.
    if rank == 0:
        (checkpoints / "step_000001" / "loop.pt").write_bytes(b"not a checkpoint")
    try:
        load_latest_run_checkpoint(checkpoints, Learner.from_hf(cfg, hf_dir))
        out["none_loads"] = "loaded"
    except CheckpointError as error:
        out["none_loads"] = str(error)
    return out


def test_checkpoint_faults(tiny_qwen3_dirs, tmp_path) -> None:
    rank0, rank1 = run_ranks(_rank_body, 2, str(tiny_qwen3_dirs["untied"]), str(tmp_path), timeout=400)
    for out in (rank0, rank1):
        assert "failed" in out["disk_full"] and "the previous checkpoint is intact" in out["disk_full"]
        assert out["latest_after_disk_full"] == "step_000002"
        assert (out["resumed_step"], out["resumed_position"], out["equals_step_1"]) == (1, 1, True)
        assert out["differs_from_step_2"]
        assert "no checkpoint in" in out["none_loads"]
    assert "on another rank" in rank0["disk_full"] and "on another rank" not in rank1["disk_full"]
    assert "rank_tp0_pp0_dp1.pt is unreadable" in rank1["none_loads"]
    assert "step_000001/loop.pt: unreadable" in rank0["none_loads"]
