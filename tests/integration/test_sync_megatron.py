"""Weight sync from a Megatron learner on two gloo ranks into the real learner engine, at TP=2 (one
pipeline stage: rank 0 sends, rank 1 drives the collective export and waits on the barrier) and at
PP=2 (two stages: each stage's rank sends its own layers; the distributed transport opens one group
per stage, in stage order).

Each transport in turn: one GRPO train step moves the learner's weights, `WeightSync.update` streams
`Learner.iter_hf_weights()`, then the engine's greedy tokens must have the learner's own log-probs
(`Learner.compute_logprobs`, float32) within LOGPROB_ATOL, and differ from the weights before the
step. Needs 0 GPUs.
"""

from __future__ import annotations

import random

import pytest
from distributed_utils import run_ranks
from rollout_fixtures import SYNC_TRANSPORTS
from rollout_reference import LOGPROB_ATOL, hf_token_logprobs

pytestmark = pytest.mark.slow

NEW_TOKENS = 10


LAYOUTS = {"tp2": (2, 1), "pp2": (1, 2)}  # name -> (tensor_parallel, pipeline_parallel)


def _rank_body(
    rank: int,
    world_size: int,
    hf_dir: str,
    url: str,
    api_key: str,
    disk_dir: str,
    prompt: list[int],
    tp: int,
    pp: int,
) -> list:
    import torch
    import torch.distributed as dist
    from rollout_reference import engine_greedy, logprobs_of

    from megatron_s2l.learner.batch import TrainBatch
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig
    from megatron_s2l.rollout.http import EngineEndpoint
    from megatron_s2l.sync.config import SyncConfig
    from megatron_s2l.sync.manifest import read_weight_manifest
    from megatron_s2l.sync.weight_sync import WeightSync

    parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    cfg = LearnerConfig(parallel=parallel, optimizer=OptimizerConfig(lr=0.05))
    learner = Learner.from_hf(cfg, hf_dir, temperature=1.0)  # the engine's log-probs are at temperature 1
    layout = learner.layout
    is_sender = layout.tp_rank == 0 and layout.dp_rank == 0  # rank 0 of its pipeline stage
    generator = torch.Generator().manual_seed(11)
    results = []
    for transport in SYNC_TRANSPORTS:
        input_ids = torch.randint(3, learner.arch.vocab_size, (2, 10), generator=generator)
        batch = TrainBatch(
            input_ids=input_ids, loss_mask=torch.ones(2, 9), advantages=torch.tensor([1.0, -1.0])
        )
        batch.old_logprobs = learner.compute_logprobs(batch)
        assert not learner.train_step(batch)["skipped"]
        config = SyncConfig(transport=transport, bucket_mb=1, timeout_s=60.0, disk_dir=disk_dir)
        sync = WeightSync(
            config,
            endpoints=[EngineEndpoint(url, api_key=api_key)],
            is_sender=is_sender,
            is_controller=rank == 0,
            stage=layout.pp_rank,
            num_stages=layout.pp,
            manifest=read_weight_manifest(hf_dir),
        )
        try:
            result = sync.update(learner.iter_hf_weights(), version=f"megatron-{transport}")
        finally:
            sync.close()
        answer = [None]
        if rank == 0:
            output = engine_greedy(url, prompt, NEW_TOKENS, api_key=api_key)
            answer = [(output["output_ids"], logprobs_of(output), output["meta_info"]["weight_version"])]
        dist.broadcast_object_list(answer, src=0)
        tokens, engine_logprobs, version = answer[0]
        sequence = torch.tensor([prompt + tokens])
        own = learner.compute_logprobs(
            TrainBatch(
                input_ids=sequence, loss_mask=torch.ones(1, sequence.shape[1] - 1), advantages=torch.zeros(1)
            )
        )[0, len(prompt) - 1 :].tolist()
        results.append((transport, tokens, engine_logprobs, own, version, result.bytes_sent))
    return results


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sync_from_megatron_makes_engine_equal_learner(
    rollout_engines, tiny_models, tmp_path, layout
) -> None:
    url, api_key = rollout_engines.learner.servers[0].url, rollout_engines.learner.api_key
    prompt = [random.randrange(3, 400) for _ in range(6)]
    tp, pp = LAYOUTS[layout]
    hf_dir, sync_dir = str(tiny_models["learner"]), str(tmp_path / "sync")
    rank0, rank1 = run_ranks(_rank_body, 2, hf_dir, url, api_key, sync_dir, prompt, tp, pp, timeout=600)
    for (transport, tokens, engine_lp, own_lp, version, sent), other in zip(rank0, rank1, strict=True):
        assert version == f"megatron-{transport}"
        if pp == 1:
            assert sent > 0 and other[5] == 0, "only the stage's rank 0 sends"
        else:
            assert sent > 0 and other[5] > 0, "each stage's rank 0 sends its own layers"
        assert len(tokens) == NEW_TOKENS
        assert engine_lp == pytest.approx(own_lp, abs=LOGPROB_ATOL), transport
        assert other[3] == pytest.approx(own_lp, abs=1e-5)  # both ranks agree on the learner's view
        before = hf_token_logprobs(tiny_models["learner"], prompt, tokens)
        assert max(abs(a - b) for a, b in zip(engine_lp, before, strict=True)) > 1e-3, "weights did not move"
