"""Tensor parallelism: the kernels over a vocab split across 2 gloo ranks give what one rank with
the whole vocab gives (values, dlogits shards, fused-linear d_hidden and d_weight shards), for both
backends, including a row whose logits on one rank are all -inf.

    TRITON_INTERPRET=1 .venv/bin/pytest tests/unit/test_kernels_tp.py -q

NUM_GPUS = 0 (2 CPU processes).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from distributed_utils import run_ranks
from test_kernels import IGNORE, fresh_seed, rel_err  # noqa: F401
from test_kernels_grpo import FULL

NUM_GPUS = 0
WORLD = 2
TOKENS, VOCAB_LOCAL, HIDDEN = 11, 131, 16  # odd shard width: ranks split at a non-block boundary
BACKENDS = ("triton", "torch")
PADDED_VOCAB = VOCAB_LOCAL + 60


def make_inputs() -> dict[str, torch.Tensor]:
    vocab = WORLD * VOCAB_LOCAL
    logits = torch.randn(TOKENS, vocab) * 3
    logits[0, :VOCAB_LOCAL] = float("-inf")  # rank 0 holds no probability mass for token 0
    targets = torch.randint(0, vocab, (TOKENS,))
    targets[0] = VOCAB_LOCAL + 5
    targets[4] = IGNORE
    return {
        "logits": logits,
        "targets": targets,
        "coef_logp": torch.randn(TOKENS),
        "coef_entropy": torch.randn(TOKENS),
        "old": torch.randn(TOKENS) - 5.0,
        "ref": torch.randn(TOKENS) - 5.0,
        "adv": torch.randn(1),
        "mask": (torch.rand(TOKENS) < 0.8).float(),
        "hidden": torch.randn(TOKENS, HIDDEN),
        "weight": torch.randn(vocab, HIDDEN) / HIDDEN**0.5 * 3,
    }


def compute_all(data: dict[str, torch.Tensor], rank: int, tp_group: dist.ProcessGroup | None) -> dict:
    """Every public op on this rank's vocab shard; returns values and gradients by name."""
    import megatron_s2l.kernels.logprobs as logprobs_mod
    from megatron_s2l.kernels import fused_grpo_loss, fused_linear_logprobs_and_entropy, logprobs_and_entropy

    logprobs_mod.MAX_BLOCK_V = 64
    width = data["logits"].shape[1] // (WORLD if tp_group is not None else 1)
    shard = slice(rank * width, (rank + 1) * width)
    out = {}
    for backend in BACKENDS:
        x = data["logits"][:, shard].clone().requires_grad_()
        logp, entropy = logprobs_and_entropy(x, data["targets"], 0.9, tp_group, backend=backend)
        (logp * data["coef_logp"] + entropy * data["coef_entropy"]).sum().backward()
        out[f"{backend}/logp"], out[f"{backend}/entropy"], out[f"{backend}/dlogits"] = logp, entropy, x.grad

        x = data["logits"][:, shard].clone().requires_grad_()
        loss, *_ = fused_grpo_loss(
            x[None],
            data["targets"][None],
            data["old"][None],
            data["adv"],
            data["mask"][None],
            FULL,
            ref_logprobs=data["ref"][None],
            temperature=0.9,
            tp_group=tp_group,
            backend=backend,
        )
        loss.backward()
        out[f"{backend}/loss"], out[f"{backend}/loss_dlogits"] = loss.detach(), x.grad

        h = data["hidden"].clone().requires_grad_()
        w = data["weight"][shard].clone().requires_grad_()
        logp, entropy = fused_linear_logprobs_and_entropy(
            h, w, data["targets"], 0.9, tp_group, chunk_size=4, backend=backend
        )
        (logp * data["coef_logp"] + entropy * data["coef_entropy"]).sum().backward()
        out[f"{backend}/linear_logp"], out[f"{backend}/linear_entropy"] = logp.detach(), entropy.detach()
        out[f"{backend}/dhidden"], out[f"{backend}/dweight"] = h.grad, w.grad

        # Megatron's padded vocab: the real ids end inside rank 1's shard.
        x = data["logits"][:, shard].clone().requires_grad_()
        logp, entropy = logprobs_and_entropy(
            x, data["targets"] % PADDED_VOCAB, 0.9, tp_group, vocab_size=PADDED_VOCAB, backend=backend
        )
        (logp * data["coef_logp"] + entropy * data["coef_entropy"]).sum().backward()
        out[f"{backend}/padded_logp"], out[f"{backend}/padded_dlogits"] = logp, x.grad
    return {name: value.detach() for name, value in out.items()}


def _rank_body(rank: int, world_size: int, data: dict[str, torch.Tensor]) -> dict:
    return compute_all(data, rank, dist.group.WORLD)


@pytest.mark.slow
def test_tp2_equals_tp1() -> None:
    data = make_inputs()
    per_rank = run_ranks(_rank_body, WORLD, data, timeout=300)
    single = compute_all(data, 0, None)
    for name, expected in single.items():
        if name.endswith(("dlogits", "dweight")):  # vocab-sharded: each rank holds its columns / rows
            actual = torch.cat([r[name] for r in per_rank], dim=1 if name.endswith("dlogits") else 0)
            assert rel_err(actual, expected) < 1e-5, name
        else:  # replicated over the TP group
            for rank, result in enumerate(per_rank):
                assert rel_err(result[name], expected, floor=1e-3) < 1e-5, (name, rank)
