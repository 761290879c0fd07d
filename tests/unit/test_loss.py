"""The GRPO policy loss, KL estimators and aggregation against a float64 scalar re-derivation."""

import math

import pytest
import torch

from megatron_s2l.algo import (
    LOSS_AGG_MODES,
    LossConfig,
    aggregate,
    entropy_from_logits,
    grpo_loss,
    kl_penalty,
    policy_loss,
)


def token_loss_reference(logp: float, old: float, adv: float, lo: float, hi: float, c: float | None) -> float:
    ratio = math.exp(max(-20.0, min(20.0, logp - old)))
    loss = max(-adv * ratio, -adv * min(max(ratio, 1 - lo), 1 + hi))
    if c is not None and adv < 0:
        loss = min(loss, -adv * c)
    return loss


def aggregate_reference(losses: list[list[float]], mask: list[list[int]], agg: str) -> float:
    """verl's agg_loss: seq-mean modes average over the rows with a counted token; the Dr.GRPO
    horizon is the padded response length (the longest response)."""
    if agg in ("token-mean", "token-mean-micro-batch"):  # one batch: one micro-batch
        total = sum(
            x * m for row, mrow in zip(losses, mask, strict=True) for x, m in zip(row, mrow, strict=True)
        )
        return total / max(1, sum(map(sum, mask)))
    seq = []
    horizon = max(1, max(map(sum, mask)))
    for row, mrow in zip(losses, mask, strict=True):
        if not any(mrow):
            continue
        s = sum(x * m for x, m in zip(row, mrow, strict=True))
        if agg == "seq-mean-token-mean":
            s /= max(1, sum(mrow))
        elif agg == "seq-mean-token-sum-norm":
            s /= horizon
        seq.append(s)
    return sum(seq) / max(1, len(seq))


def random_batch(B: int = 6, T: int = 9, seed: int | None = None):
    gen = torch.Generator().manual_seed(torch.seed() if seed is None else seed)
    old = -torch.rand(B, T, generator=gen, dtype=torch.float64) * 3
    logp = old + torch.randn(B, T, generator=gen, dtype=torch.float64) * 0.4  # ratios well outside the clip
    adv = torch.randn(B, generator=gen, dtype=torch.float64)
    lengths = torch.randint(0, T + 1, (B,), generator=gen)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(torch.float64)
    return logp, old, adv, mask


@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
@pytest.mark.parametrize("clip_c", [None, 3.0])
def test_policy_loss_matches_scalar_reference(agg: str, clip_c: float | None) -> None:
    logp, old, adv, mask = random_batch()
    mask[0] = 0.0  # an all-masked row: it must not count in the seq-mean modes
    loss, metrics = policy_loss(
        logp.float(), old.float(), adv.float(), mask, clip_low=0.2, clip_high=0.28, clip_c=clip_c, agg=agg
    )
    B, T = logp.shape
    token_losses = [
        [
            token_loss_reference(logp[b, t].item(), old[b, t].item(), adv[b].item(), 0.2, 0.28, clip_c)
            for t in range(T)
        ]
        for b in range(B)
    ]
    want = aggregate_reference(token_losses, mask.int().tolist(), agg)
    assert loss.item() == pytest.approx(want, rel=1e-5, abs=1e-6)

    ratio = (logp - old).exp()
    n = mask.sum().clamp(min=1)
    high = ((ratio > 1.28) & (adv[:, None] > 0)).double()
    low = ((ratio < 0.8) & (adv[:, None] < 0)).double()
    assert metrics["clipfrac_high"].item() == pytest.approx(((high * mask).sum() / n).item(), abs=1e-6)
    assert metrics["clipfrac_low"].item() == pytest.approx(((low * mask).sum() / n).item(), abs=1e-6)
    assert metrics["approx_kl"].item() == pytest.approx((((old - logp) * mask).sum() / n).item(), rel=1e-4)
    if clip_c is None:
        assert metrics["clipfrac_dual"].item() == 0.0


def test_dual_clip_hand_case() -> None:
    # A = -1, ratio = e^2 ~ 7.39: PPO clip alone keeps -A*ratio = 7.39; dual clip caps it at -A*c = 3.
    logp, old = torch.tensor([[2.0]]), torch.tensor([[0.0]])
    adv, mask = torch.tensor([-1.0]), torch.ones(1, 1)
    no_dual, _ = policy_loss(logp, old, adv, mask)
    dual, metrics = policy_loss(logp, old, adv, mask, clip_c=3.0)
    assert no_dual.item() == pytest.approx(math.exp(2.0), rel=1e-6)
    assert dual.item() == pytest.approx(3.0)
    assert metrics["clipfrac_dual"].item() == 1.0


def test_clip_higher_hand_case() -> None:
    # A = +1, ratio 1.25: clipped by the symmetric 0.2 clip (loss -1.2) but not by clip_high 0.28.
    logp, old = torch.tensor([[math.log(1.25)]]), torch.zeros(1, 1)
    adv, mask = torch.ones(1), torch.ones(1, 1)
    sym, m_sym = policy_loss(logp, old, adv, mask, clip_high=0.2)
    dapo, m_dapo = policy_loss(logp, old, adv, mask, clip_high=0.28)
    assert sym.item() == pytest.approx(-1.2) and m_sym["clipfrac_high"].item() == 1.0
    assert dapo.item() == pytest.approx(-1.25) and m_dapo["clipfrac_high"].item() == 0.0


GLOBAL_BATCH_MODES = [agg for agg in LOSS_AGG_MODES if agg != "token-mean-micro-batch"]


@pytest.mark.parametrize("agg", GLOBAL_BATCH_MODES)
def test_micro_batch_gradients_equal_full_batch(agg: str) -> None:
    """Summing micro-batch losses normalised by the global counts gives the full-batch gradient."""
    logp, old, adv, mask = random_batch(B=8, T=7)
    mask[3] = 0.0  # an all-masked row (a micro-batch of its own below)
    kwargs = dict(clip_low=0.2, clip_high=0.28, clip_c=3.0, agg=agg, norm_len=7)
    full = logp.clone().requires_grad_()
    policy_loss(full, old, adv, mask, **kwargs)[0].backward()

    micro = logp.clone().requires_grad_()
    total = 0.0
    for rows in (slice(0, 3), slice(3, 4), slice(4, 8)):  # uneven micro-batches
        loss, _ = policy_loss(
            micro[rows],
            old[rows],
            adv[rows],
            mask[rows],
            global_tokens=mask.sum().item(),
            global_seqs=int((mask.sum(-1) > 0).sum()),
            **kwargs,
        )
        loss.backward()
        total += loss.item()
    torch.testing.assert_close(micro.grad, full.grad, rtol=1e-12, atol=1e-12)
    assert total == pytest.approx(policy_loss(logp, old, adv, mask, **kwargs)[0].item(), rel=1e-12)


def test_micro_batch_without_global_count_differs() -> None:
    # Guards the test above: local token-mean normalisation really gives another gradient.
    logp, old, adv, mask = random_batch(B=8, T=7, seed=3)
    mask[0] = 1.0
    mask[1:4] = 0.0
    mask[1:4, 0] = 1.0
    full = logp.clone().requires_grad_()
    policy_loss(full, old, adv, mask)[0].backward()
    micro = logp.clone().requires_grad_()
    for rows in (slice(0, 4), slice(4, 8)):
        policy_loss(micro[rows], old[rows], adv[rows], mask[rows])[0].backward()
    assert not torch.allclose(micro.grad, full.grad)


def verl_micro_batch_objective(
    logp_RMBT: torch.Tensor,
    old_RMBT: torch.Tensor,
    ref_RMBT: torch.Tensor,
    adv_RMB: torch.Tensor,
    mask_RMBT: torch.Tensor,
    *,
    clip: float,
    clip_c: float,
    kl_coef: float,
) -> torch.Tensor:
    """What verl's actor optimises with loss_agg_mode token-mean and fixed-size micro-batches (the
    verl of the S2L-PO authors' fork: verl/workers/actor/dp_actor.py `update_policy`,
    verl/trainer/ppo/core_algos.py `agg_loss` and `compute_policy_loss_vanilla`, `kl_penalty`
    low_var_kl; verl/utils/torch_functional.py `masked_mean`), written out in float64: on each of R
    DP ranks, every micro-batch's loss is its masked token mean (sum / (count + 1e-8)) of the PPO loss
    plus kl_coef times that of the k3 KL, times loss_scale_factor = 1 / gradient_accumulation (M
    micro-batches); backward sums over micro-batches, and FSDP averages gradients over the R ranks."""
    R, M = logp_RMBT.shape[:2]
    total = logp_RMBT.new_zeros(())
    for r in range(R):
        rank_total = logp_RMBT.new_zeros(())
        for m in range(M):
            logp, old, ref, mask = logp_RMBT[r, m], old_RMBT[r, m], ref_RMBT[r, m], mask_RMBT[r, m]
            adv = adv_RMB[r, m][:, None].expand_as(logp)
            ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
            pg1 = torch.maximum(-adv * ratio, -adv * torch.clamp(ratio, 1 - clip, 1 + clip))
            pg = torch.where(adv < 0, torch.minimum(-adv * clip_c, pg1), pg1)
            kl = torch.clamp(ref - logp, -20.0, 20.0)
            kld = torch.clamp(torch.exp(kl) - kl - 1, -10.0, 10.0)
            pg_loss = (pg * mask).sum() / (mask.sum() + 1e-8)
            kl_loss = (kld * mask).sum() / (mask.sum() + 1e-8)
            rank_total = rank_total + (pg_loss + kl_coef * kl_loss) * (1.0 / M)
        total = total + rank_total / R
    return total


def test_token_mean_micro_batch_matches_verl_per_micro_batch_mean() -> None:
    """2 DP ranks x 3 micro-batches of 4 sequences (gradient accumulation 3), responses of very
    different lengths: the sum of our micro-batch losses (what grpo_step's scaling hands to the
    gradient) equals verl's objective, and so does its gradient; plain token-mean does not."""
    R, M, B, T = 2, 3, 4, 11
    logp, old, adv, mask = random_batch(B=R * M * B, T=T)
    mask[0] = 0.0
    mask[0, 0] = 1.0  # a one-token response beside long ones: micro-batch means differ from token-mean
    ref = old + torch.randn_like(old) * 0.3
    cfg = LossConfig(clip_low=0.2, clip_high=0.2, clip_c=3.0, kl_coef=0.001, kl_estimator="k3")
    cfg_mb = LossConfig(
        clip_low=0.2,
        clip_high=0.2,
        clip_c=3.0,
        kl_coef=0.001,
        kl_estimator="k3",
        agg="token-mean-micro-batch",
    )

    def shaped(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(R, M, B, *x.shape[1:])

    verl_logp = logp.clone().requires_grad_()
    want = verl_micro_batch_objective(
        shaped(verl_logp),
        shaped(old),
        shaped(ref),
        shaped(adv),
        shaped(mask),
        clip=0.2,
        clip_c=3.0,
        kl_coef=0.001,
    )
    want.backward()

    ours_logp = logp.clone().requires_grad_()
    total = ours_logp.new_zeros(())
    for start in range(0, R * M * B, B):  # rank-major: rank r holds micro-batches r*M .. r*M + M-1
        rows = slice(start, start + B)
        loss, _ = grpo_loss(
            cfg_mb,
            ours_logp[rows],
            old[rows],
            adv[rows],
            mask[rows],
            ref_logprobs=ref[rows],
            micro_batches=R * M,
        )
        total = total + loss
    total.backward()
    assert total.item() == pytest.approx(want.item(), rel=1e-7)
    torch.testing.assert_close(ours_logp.grad, verl_logp.grad, rtol=1e-6, atol=1e-12)

    global_mean, _ = grpo_loss(cfg, logp, old, adv, mask, ref_logprobs=ref)
    assert global_mean.item() != pytest.approx(want.item(), rel=1e-3)


def test_token_mean_micro_batch_rejects_a_non_positive_count() -> None:
    logp, _, _, mask = random_batch(B=2, T=3, seed=5)
    with pytest.raises(ValueError, match="micro_batches must be >= 1"):
        aggregate(logp, mask, "token-mean-micro-batch", micro_batches=0)


@pytest.mark.parametrize("agg", LOSS_AGG_MODES)
def test_non_finite_values_in_masked_positions_do_not_reach_the_loss(agg: str) -> None:
    """Padding may hold -inf (an engine's log-prob) or NaN: selected out, not multiplied by 0."""
    logp, old, adv, mask = random_batch(seed=11)
    mask[:, -2:] = 0.0
    ref = old - 0.1
    cfg = LossConfig(clip_c=3.0, kl_coef=0.1, entropy_coef=0.01, agg=agg)
    entropy = torch.rand_like(logp)
    clean_logp = logp.clone().requires_grad_()
    clean, _ = grpo_loss(cfg, clean_logp, old, adv, mask, ref_logprobs=ref, entropy=entropy)
    clean.backward()

    def poison(x: torch.Tensor, value: float) -> torch.Tensor:
        return torch.where(mask.bool(), x, value)

    dirty_logp = poison(logp, float("-inf")).requires_grad_()
    dirty, metrics = grpo_loss(
        cfg,
        dirty_logp,
        poison(old, float("nan")),
        adv,
        mask,
        ref_logprobs=poison(ref, float("inf")),
        entropy=poison(entropy, float("nan")),
    )
    dirty.backward()
    assert torch.isfinite(dirty) and dirty.item() == pytest.approx(clean.item(), rel=1e-12)
    assert all(torch.isfinite(v) for v in metrics.values())
    assert torch.isfinite(dirty_logp.grad).all()
    torch.testing.assert_close(dirty_logp.grad, clean_logp.grad, rtol=0, atol=0)


def test_kl_estimators_against_formulas() -> None:
    logp = torch.randn(50, dtype=torch.float64)
    ref = torch.randn(50, dtype=torch.float64)
    d = (logp - ref).tolist()
    k1 = kl_penalty(logp, ref, "k1").tolist()
    k2 = kl_penalty(logp, ref, "k2").tolist()
    k3 = kl_penalty(logp, ref, "k3").tolist()
    for x, a, b, c in zip(d, k1, k2, k3, strict=True):
        assert a == pytest.approx(x)
        assert b == pytest.approx(0.5 * x * x)
        assert c == pytest.approx(min(10.0, math.exp(-x) + x - 1))
    # k3 clamps: a huge log-ratio gives exactly the clamp, never inf
    assert kl_penalty(torch.tensor([-50.0]), torch.tensor([0.0]), "k3").item() == 10.0
    assert kl_penalty(torch.tensor([0.3]), torch.tensor([0.3]), "k3").item() == 0.0


def test_entropy_from_logits_against_definition() -> None:
    logits = torch.randn(4, 11, dtype=torch.float64) * 5
    p = logits.softmax(-1)
    want = -(p * p.log()).sum(-1)
    torch.testing.assert_close(entropy_from_logits(logits), want.float(), rtol=1e-5, atol=1e-6)


def test_grpo_loss_composes_terms() -> None:
    logp, old, adv, mask = random_batch(seed=7)
    ref = old + 0.1
    entropy = torch.rand_like(logp)
    cfg = LossConfig(clip_high=0.28, kl_coef=0.05, kl_estimator="k3", entropy_coef=0.01)
    loss, metrics = grpo_loss(cfg, logp, old, adv, mask, ref_logprobs=ref, entropy=entropy)
    pg, _ = policy_loss(logp, old, adv, mask, clip_high=0.28)
    kl = aggregate(kl_penalty(logp, ref, "k3"), mask)
    ent = aggregate(entropy, mask)
    assert loss.item() == pytest.approx((pg + 0.05 * kl - 0.01 * ent).item(), rel=1e-10)
    assert metrics["kl"].item() == pytest.approx(kl.item())
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(cfg, logp, old, adv, mask, entropy=entropy)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"clip_low": 1.0}, "clip_low"), ({"clip_c": 0.5}, "clip_c"), ({"kl_coef": -1.0}, "kl_coef")],
)
def test_loss_config_rejects_impossible_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        LossConfig(**kwargs)
