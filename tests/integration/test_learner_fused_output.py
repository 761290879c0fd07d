"""`learner.fused_output_layer`: the last stage returns hidden states and the log-probs come from the
chunked fused linear op. Against the logits path of the same Megatron learner (gloo ranks, tiny
Qwen3, float32): the same log-probs and the same gradients (DDP's reduced buffers, output weight
included), at TP 1, TP 2 and PP 2 (tied embeddings: the weight is the embedding's copy on the last
stage).

    .venv/bin/pytest tests/integration/test_learner_fused_output.py
"""

from __future__ import annotations

import pytest
import torch
from distributed_utils import run_ranks
from test_learner_micro_batches import varied_batch

pytestmark = pytest.mark.slow

# name -> (world size, tensor_parallel, pipeline_parallel, model)
LAYOUTS = {"tp1": (1, 1, 1, "untied"), "tp2": (2, 2, 1, "untied"), "pp2-tied": (2, 1, 2, "tied")}


def _body(rank: int, world_size: int, hf_dir: str, tp: int, pp: int) -> dict:
    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    out = {}
    for fused in (False, True):
        cfg = LearnerConfig(
            parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, max_tokens_per_micro_batch=60),
            optimizer=OptimizerConfig(lr=1e-30, grad_clip=0.0),  # weights stay put: compare gradients
            vocab_pad_multiple=48,  # padded vocabulary rows: the fused op must skip them too
            fused_output_layer=fused,
        )
        loss = LossConfig(clip_low=0.2, clip_high=0.28, entropy_coef=0.01)
        learner = Learner.from_hf(cfg, hf_dir, loss=loss, temperature=0.9)
        batch = varied_batch(learner.arch.vocab_size)
        logprobs, entropy = learner.compute_logprobs_and_entropy(batch)
        noise = torch.Generator().manual_seed(5)
        batch.old_logprobs = logprobs + 0.3 * torch.randn(logprobs.shape, generator=noise)
        metrics = learner.train_step(batch)
        grads = {n: p.main_grad.detach().clone() for n, p in learner.model.named_parameters()}
        out[fused] = {"logprobs": logprobs, "entropy": entropy, "loss": metrics["loss"], "grads": grads}
    return out


@pytest.fixture(scope="module")
def results(tiny_qwen3_dirs) -> dict[str, list[dict]]:
    return {
        name: run_ranks(_body, world, str(tiny_qwen3_dirs[model]), tp, pp, timeout=600)
        for name, (world, tp, pp, model) in LAYOUTS.items()
    }


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_fused_output_layer_matches_the_logits_path(results, name: str) -> None:
    for rank_result in results[name]:
        plain, fused = rank_result[False], rank_result[True]
        torch.testing.assert_close(fused["logprobs"], plain["logprobs"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fused["entropy"], plain["entropy"], rtol=1e-5, atol=1e-5)
        assert fused["loss"] == pytest.approx(plain["loss"], rel=1e-5)
        assert fused["grads"].keys() == plain["grads"].keys()
        for param, grad in plain["grads"].items():
            scale = max(1.0, grad.abs().max().item())
            torch.testing.assert_close(fused["grads"][param], grad, rtol=0, atol=1e-5 * scale, msg=param)
        output = [n for n in plain["grads"] if "output_layer" in n or "word_embeddings" in n]
        assert output and any(plain["grads"][n].abs().max() > 1e-4 for n in output)  # a real gradient
