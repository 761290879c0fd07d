"""Truncated importance sampling (`algo.rollout_correction: tis`) against a float64 re-derivation of
verl's: the PPO-clip loss with dual clip per token, times min(exp(old_logp - rollout_logp), cap)
(verl/trainer/ppo/core_algos.py `compute_policy_loss_vanilla`), aggregated over the masked tokens.
Our implementation scales the advantages instead; loss and gradient must be the same, through
`policy_loss` and through the fused kernel (Triton's interpreter on CPU).

    TRITON_INTERPRET=1 .venv/bin/pytest tests/unit/test_tis.py -q
"""

from __future__ import annotations

import pytest
import torch
from test_kernels import reference_logp_entropy, rel_err, small_vocab_blocks  # noqa: F401

from megatron_s2l.algo.loss import LossConfig, policy_loss, truncated_importance_weights
from megatron_s2l.kernels import fused_grpo_loss
from megatron_s2l.learner.batch import TrainBatch
from megatron_s2l.rollout.records import RolloutRecord
from megatron_s2l.run.experience import learner_engine_logprobs
from megatron_s2l.run.steps import reweight_by_tis

NUM_GPUS = 0
CLIP_LOW, CLIP_HIGH, CLIP_C, CAP = 0.2, 0.28, 3.0, 1.5


def verl_tis_loss(logp, old, rollout, adv_B, mask, learner_rows, agg: str) -> torch.Tensor:
    """verl's vanilla policy loss with TIS on the rows of `learner_rows` (weight 1 on the others),
    from its formula, in the dtype of the inputs."""
    adv = adv_B[:, None].expand_as(logp)
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    losses1 = -adv * ratio
    losses2 = -adv * torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH)
    clipped1 = torch.maximum(losses1, losses2)
    clipped2 = torch.minimum(-adv * CLIP_C, clipped1)
    pg = torch.where(adv < 0, clipped2, clipped1)
    tis = torch.exp(old - rollout).clamp(max=CAP)
    pg = pg * torch.where(learner_rows[:, None], tis, torch.ones_like(tis))
    pg = torch.where(mask.bool(), pg, 0.0)
    if agg == "token-mean":
        return pg.sum() / mask.sum()
    counted = mask.sum(-1) > 0  # seq-mean-token-mean over the rows with a counted token
    return (pg.sum(-1)[counted] / mask.sum(-1)[counted]).mean()


def make_rollout(batch: int, seq: int) -> dict[str, torch.Tensor]:
    """Old log-probs near the current ones (some ratios clipped, some past the dual clip) and engine
    log-probs near the old ones (some weights capped); the last row an explorer sample's (no engine
    log-probs to correct against: NaN), padding with junk engine log-probs, a fully masked row."""
    logp = -torch.rand(batch, seq, dtype=torch.float64) * 3
    old = logp + 0.7 * torch.randn(batch, seq, dtype=torch.float64)
    rollout = old + 0.5 * torch.randn(batch, seq, dtype=torch.float64)
    mask = (torch.rand(batch, seq) < 0.8).double()
    mask[-2] = 0.0
    rollout[mask == 0] = float("-inf")  # junk an engine could report where nothing counts
    rollout[0][mask[0] == 0] = float("nan")
    rollout[-1] = float("nan")
    learner_rows = torch.ones(batch, dtype=torch.bool)
    learner_rows[-1] = False
    return {
        "logp": logp,
        "old": old,
        "rollout": rollout,
        "adv": torch.randn(batch, dtype=torch.float64),
        "mask": mask,
        "learner_rows": learner_rows,
    }


def reference_rollout(data: dict[str, torch.Tensor]) -> torch.Tensor:
    """The engine log-probs verl would see: the learner rows' real ones, 0 where masked."""
    return torch.where(data["mask"].bool() & data["learner_rows"][:, None], data["rollout"], 0.0)


def reweighted_advantages(data: dict[str, torch.Tensor]) -> torch.Tensor:
    weights, _ = truncated_importance_weights(data["old"], data["rollout"], data["mask"], CAP)
    return data["adv"][:, None] * weights


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
def test_policy_loss_with_reweighted_advantages_is_verl_tis(agg: str) -> None:
    torch.manual_seed(0)
    data = make_rollout(8, 24)
    logp_ref = data["logp"].clone().requires_grad_()
    ref = verl_tis_loss(
        logp_ref, data["old"], reference_rollout(data), data["adv"], data["mask"], data["learner_rows"], agg
    )
    (ref_grad,) = torch.autograd.grad(ref, logp_ref)
    logp = data["logp"].clone().requires_grad_()
    loss, metrics = policy_loss(
        logp,
        data["old"],
        reweighted_advantages(data),
        data["mask"],
        clip_low=CLIP_LOW,
        clip_high=CLIP_HIGH,
        clip_c=CLIP_C,
        agg=agg,
    )
    (grad,) = torch.autograd.grad(loss, logp)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-12, atol=1e-12)
    # The cases the equivalence rests on were all exercised, and TIS changed the loss.
    assert metrics["clipfrac_high"] > 0 and metrics["clipfrac_low"] > 0 and metrics["clipfrac_dual"] > 0
    plain, _ = policy_loss(
        data["logp"], data["old"], data["adv"], data["mask"], clip_low=CLIP_LOW, clip_high=CLIP_HIGH,
        clip_c=CLIP_C, agg=agg,
    )  # fmt: skip
    assert abs(float(plain - ref.detach())) > 1e-3


def test_weights_and_metrics() -> None:
    torch.manual_seed(1)
    data = make_rollout(6, 16)
    weights, metrics = truncated_importance_weights(data["old"], data["rollout"], data["mask"], CAP)
    counted = data["mask"].bool() & data["learner_rows"][:, None]
    raw = torch.exp(data["old"] - data["rollout"])[counted]
    assert torch.equal(weights[~counted], torch.ones_like(weights[~counted]))
    torch.testing.assert_close(weights[counted], raw.clamp(max=CAP))
    assert metrics["tis_mean"] == pytest.approx(float(raw.clamp(max=CAP).mean()))
    assert metrics["tis_clipped_frac"] == pytest.approx(float((raw > CAP).double().mean()))
    assert 0 < metrics["tis_clipped_frac"] < 1
    # Nothing to reweight (an explorer-only batch): weights 1, no metrics.
    nan = torch.full_like(data["rollout"], float("nan"))
    weights, metrics = truncated_importance_weights(data["old"], nan, data["mask"], CAP)
    assert torch.equal(weights, torch.ones_like(weights)) and metrics == {}


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_fused_kernel_with_reweighted_advantages_is_verl_tis(backend: str) -> None:
    torch.manual_seed(2)
    batch, seq, vocab = 4, 9, 131
    logits = torch.randn(batch, seq, vocab) * 2
    targets = torch.randint(0, vocab, (batch, seq))
    data = make_rollout(batch, seq)
    logp64, _ = reference_logp_entropy(logits.double(), targets)
    data["old"] = logp64 + 0.7 * torch.randn(batch, seq, dtype=torch.float64)
    data["rollout"] = torch.where(
        data["rollout"].isnan(), data["rollout"], data["old"] + 0.5 * torch.randn(batch, seq).double()
    )
    x64 = logits.double().requires_grad_()
    logp_ref, _ = reference_logp_entropy(x64, targets)
    ref = verl_tis_loss(
        logp_ref, data["old"], reference_rollout(data), data["adv"], data["mask"], data["learner_rows"],
        "token-mean",
    )  # fmt: skip
    (ref_grad,) = torch.autograd.grad(ref, x64)
    x = logits.clone().requires_grad_()
    cfg = LossConfig(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, clip_c=CLIP_C)
    loss, *_ = fused_grpo_loss(
        x,
        targets,
        data["old"].float(),
        reweighted_advantages(data).float(),
        data["mask"].float(),
        cfg,
        backend=backend,
    )
    (grad,) = torch.autograd.grad(loss, x)
    assert rel_err(loss, ref, floor=0.1) < 1e-5
    assert rel_err(grad, ref_grad) < 1e-5


def test_batch_layout_and_reweighting() -> None:
    """The engine log-probs sit where the learner's log-probs of the same tokens do (column t:
    token t + 1), only on learner samples; reweighting makes the advantages per token."""
    records = [
        RolloutRecord("p", 0, "learner", [1, 2, 3], [4, 5], [-0.5, -0.25], "stop", "3"),
        RolloutRecord("p", 0, "explorer", [1, 2], [6, 7, 8], [-1.0, -1.0, -1.0], "stop", "default"),
    ]
    batch = TrainBatch.from_sequences(
        [r.prompt_ids for r in records], [r.response_ids for r in records], torch.tensor([1.0, -2.0])
    )
    batch.rollout_logprobs = learner_engine_logprobs(records, batch.loss_mask.shape)
    learner_cols = batch.loss_mask[0].bool()
    assert batch.rollout_logprobs[0, learner_cols].tolist() == [-0.5, -0.25]
    assert batch.rollout_logprobs[0, ~learner_cols].isnan().all() and batch.rollout_logprobs[1].isnan().all()
    batch.old_logprobs = torch.full_like(batch.loss_mask, -0.5)
    reweighted, metrics = reweight_by_tis(batch, cap=1.1)
    # Token 4: exp(0) = 1; token 5: exp(-0.25) ~ 0.78; the explorer row keeps its advantage.
    assert reweighted.rollout_logprobs is None and reweighted.advantages.shape == batch.loss_mask.shape
    expected = torch.tensor([1.0, torch.exp(torch.tensor(-0.25)).item()])
    torch.testing.assert_close(reweighted.advantages[0, learner_cols], expected)
    assert (reweighted.advantages[1] == -2.0).all()
    assert metrics["tis_clipped_frac"] == 0.0
    assert metrics["tis_mean"] == pytest.approx(float(expected.mean()))
