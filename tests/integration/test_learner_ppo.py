"""PPO mini-batch updates and the KL reference policy of the Megatron learner, against an independent
reference: the same updates made with Hugging Face `transformers` autograd, `torch.optim.Adam` and
the GRPO objective written out here in plain torch (token-mean, clip-higher, dual clip, k3 KL to the
frozen base model). Also: one mini-batch is today's single update bit for bit; DP=2 equals DP=1;
the reference log-probs equal the old log-probs before the first update and the base model's
after it; clip fractions appear once a later mini-batch has moved the policy. Needs 0 GPUs.

    .venv/bin/pytest tests/integration/test_learner_ppo.py
"""

from __future__ import annotations

import pytest
import torch
from distributed_utils import run_ranks

pytestmark = pytest.mark.slow

PROMPTS, GROUP, PER_UPDATE = 4, 4, 1  # 4 optimizer updates of one group (4 sequences) each
LR, ADAM_EPS, GRAD_CLIP, TEMPERATURE = 3e-3, 1e-3, 1.0, 0.9
CLIP_LOW, CLIP_HIGH, CLIP_C, KL_COEF = 0.2, 0.28, 3.0, 0.05


def grouped_batch(vocab_size: int):
    """PROMPTS groups of GROUP rows: a shared 3-token prompt per group, responses of varied length,
    group-relative advantages of random rewards."""
    from megatron_s2l.algo import grpo_advantages
    from megatron_s2l.learner.batch import TrainBatch

    gen = torch.Generator().manual_seed(11)
    rows, length = PROMPTS * GROUP, 14
    input_ids = torch.randint(0, vocab_size, (rows, length), generator=gen)
    for g in range(PROMPTS):
        input_ids[g * GROUP : (g + 1) * GROUP, :3] = input_ids[g * GROUP, :3]
    loss_mask = torch.zeros(rows, length - 1)
    for row in range(rows):
        loss_mask[row, 2 : 2 + int(torch.randint(4, length - 2, (), generator=gen))] = 1.0
    rewards = torch.randn(rows, generator=gen)
    advantages = grpo_advantages(rewards, torch.arange(rows) // GROUP)
    return TrainBatch(input_ids=input_ids, loss_mask=loss_mask, advantages=advantages)


def _learner(hf_dir: str, dp: int, mini_batch_size: int, *, kl: bool, offload: bool = False):
    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    cfg = LearnerConfig(
        parallel=ParallelConfig(micro_batch_size=mini_batch_size),
        optimizer=OptimizerConfig(lr=LR, adam_eps=ADAM_EPS, grad_clip=GRAD_CLIP),
        vocab_pad_multiple=48,
        reference_offload=offload,
    )
    loss = LossConfig(clip_low=CLIP_LOW, clip_high=CLIP_HIGH, clip_c=CLIP_C, kl_coef=KL_COEF if kl else 0.0)
    return Learner.from_hf(cfg, hf_dir, loss=loss, temperature=TEMPERATURE)


def _rank_body(rank: int, world_size: int, hf_dir: str, runs: list[str]) -> dict:
    from megatron_s2l.algo import ppo_mini_batch_rows

    out = {}
    for run in runs:
        offload = run == "ppo-offload"
        if run == "single-update":
            learner = _learner(hf_dir, world_size, 4, kl=False)
            batch = grouped_batch(learner.arch.vocab_size)
            batch.old_logprobs = learner.compute_logprobs(batch)
            metrics = learner.train_step(batch)
            out[run] = {"metrics": [metrics], "weights": dict(learner.iter_hf_weights())}
            continue
        per_rank_micro = PER_UPDATE * GROUP // world_size if run != "ppo-as-one" else 4
        learner = _learner(hf_dir, world_size, per_rank_micro, kl=run != "ppo-as-one", offload=offload)
        batch = grouped_batch(learner.arch.vocab_size)
        batch.old_logprobs = learner.compute_logprobs(batch)
        result: dict = {}
        if learner.reference is not None:
            batch.ref_logprobs = learner.compute_ref_logprobs(batch)
            result["ref_equals_old_before_update"] = torch.equal(batch.ref_logprobs, batch.old_logprobs)
        per_update = 0 if run == "ppo-as-one" else PER_UPDATE
        slices = ppo_mini_batch_rows(PROMPTS, GROUP, per_update, epochs=1, seed=0, step=1)
        result["slices"] = slices
        result["metrics"] = [learner.train_step(batch.select(rows)) for rows in slices]
        if learner.reference is not None:
            result["ref_after"] = learner.compute_ref_logprobs(batch)
            result["policy_after"] = learner.compute_logprobs(batch)
            if offload:
                result["ref_param_devices"] = {p.device.type for p in learner.reference.model.parameters()}
        result["weights"] = dict(learner.iter_hf_weights())
        out[run] = result
    return out


def _resume_body(rank: int, world_size: int, hf_dir: str, checkpoint_dir: str) -> dict:
    """Train with the KL loss, save, then build a fresh learner and load the checkpoint (a resume)."""
    trained = _learner(hf_dir, world_size, 4, kl=True)
    batch = grouped_batch(trained.arch.vocab_size)
    batch.old_logprobs = trained.compute_logprobs(batch)
    batch.ref_logprobs = trained.compute_ref_logprobs(batch)
    for rows in (slice(0, 8), slice(8, 16)):
        trained.train_step(batch.select(rows))
    trained.save(checkpoint_dir)
    resumed = _learner(hf_dir, world_size, 4, kl=True)
    resumed.load(checkpoint_dir)
    return {
        "reference_rebuilt": torch.equal(resumed.compute_ref_logprobs(batch), batch.ref_logprobs),
        "policy_restored": torch.equal(resumed.compute_logprobs(batch), trained.compute_logprobs(batch)),
        "policy_moved": not torch.equal(resumed.compute_logprobs(batch), batch.old_logprobs),
    }


def hf_logprobs(model, input_ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids).logits[:, :-1].float() / TEMPERATURE
    return torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None])[..., 0]


def reference_updates(hf_dir: str, batch, slices: list[slice]) -> tuple[list[dict], dict, torch.Tensor]:
    """The same updates, written independently: transformers autograd, torch Adam, plain-torch GRPO."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=LR, eps=ADAM_EPS)
    with torch.no_grad():
        old = hf_logprobs(model, batch.input_ids)
        ref = hf_logprobs(base, batch.input_ids)
    metrics = []
    for rows in slices:
        ids, mask, adv = batch.input_ids[rows], batch.loss_mask[rows], batch.advantages[rows, None]
        logp = hf_logprobs(model, ids)
        ratio = torch.exp(logp - old[rows])
        clipped = torch.clamp(ratio, 1 - CLIP_LOW, 1 + CLIP_HIGH)
        pg = torch.maximum(-adv * ratio, -adv * clipped)
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * CLIP_C), pg)
        d = torch.clamp(ref[rows] - logp, -20, 20)
        k3 = torch.clamp(torch.exp(d) - d - 1, -10, 10)  # verl's low_var_kl
        n = mask.sum()
        pg_loss, kl = (pg * mask).sum() / n, (k3 * mask).sum() / n
        loss = pg_loss + KL_COEF * kl
        optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimizer.step()
        clipped_high = ((ratio > 1 + CLIP_HIGH) & (adv > 0)).float()
        metrics.append(
            {
                "loss": loss.item(),
                "pg_loss": pg_loss.item(),
                "kl": kl.item(),
                "grad_norm": grad_norm.item(),
                "clipfrac_high": ((clipped_high * mask).sum() / n).item(),
            }
        )
    with torch.no_grad():
        ref_logprobs_after = hf_logprobs(base, batch.input_ids)
    return metrics, dict(model.state_dict()), ref_logprobs_after


@pytest.fixture(scope="module")
def results(tiny_qwen3_dirs) -> dict:
    hf_dir = str(tiny_qwen3_dirs["untied"])
    one = run_ranks(_rank_body, 1, hf_dir, ["ppo", "ppo-offload", "ppo-as-one", "single-update"], timeout=400)
    two = run_ranks(_rank_body, 2, hf_dir, ["ppo"], timeout=400)
    return {"dp1": one[0], "dp2": two[0], "hf_dir": hf_dir}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_k_mini_batches_equal_k_independent_reference_updates(results) -> None:
    run = results["dp1"]["ppo"]
    from megatron_s2l.learner.hf_loader import SafetensorsSource

    batch = grouped_batch(SafetensorsSource(results["hf_dir"]).shape("model.embed_tokens.weight")[0])
    assert len(run["slices"]) == PROMPTS // PER_UPDATE
    want_metrics, want_weights, _ = reference_updates(results["hf_dir"], batch, run["slices"])
    for got, want in zip(run["metrics"], want_metrics, strict=True):
        for key in ("loss", "pg_loss", "kl", "grad_norm", "clipfrac_high"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
    weights = run["weights"]
    moved = _max_diff(weights, {n: SafetensorsSource(results["hf_dir"]).read(n) for n in weights})
    diff = _max_diff(weights, {n: want_weights[n] for n in weights})
    print(f"4 PPO updates: weights moved {moved:.2e}, max |megatron - transformers reference| {diff:.2e}")
    assert moved > 5e-3 and diff < 1e-4


def test_clip_fractions_appear_after_the_first_update(results) -> None:
    metrics = results["dp1"]["ppo"]["metrics"]
    first, later = metrics[0], metrics[1:]
    # The first update sees the policy that computed the old log-probs: every ratio is exactly 1.
    assert first["approx_kl"] == 0.0 and first["clipfrac_high"] + first["clipfrac_low"] == 0.0
    assert first["kl"] == 0.0  # and the reference policy equals it
    assert any(m["clipfrac_high"] + m["clipfrac_low"] > 0 for m in later)
    assert all(m["approx_kl"] != 0.0 and m["kl"] > 0.0 for m in later)


def test_one_mini_batch_is_the_single_update_bitwise(results) -> None:
    as_one, single = results["dp1"]["ppo-as-one"], results["dp1"]["single-update"]
    assert len(as_one["slices"]) == 1
    assert as_one["metrics"] == single["metrics"]
    assert all(torch.equal(as_one["weights"][n], single["weights"][n]) for n in single["weights"])


def test_data_parallel_mini_batches_equal_one_rank(results) -> None:
    dp1, dp2 = results["dp1"]["ppo"], results["dp2"]["ppo"]
    for got, want in zip(dp2["metrics"], dp1["metrics"], strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    assert _max_diff(dp2["weights"], dp1["weights"]) < 1e-5


@pytest.mark.parametrize("run", ["ppo", "ppo-offload"])
def test_reference_is_the_frozen_base_model(results, run: str) -> None:
    got = results["dp1"][run]
    assert got["ref_equals_old_before_update"]
    from megatron_s2l.learner.hf_loader import SafetensorsSource

    batch = grouped_batch(SafetensorsSource(results["hf_dir"]).shape("model.embed_tokens.weight")[0])
    _, _, base_logprobs = reference_updates(results["hf_dir"], batch, [])
    mask = batch.loss_mask.bool()
    assert (got["ref_after"] - base_logprobs)[mask].abs().max().item() < 1e-4
    assert (got["policy_after"] - base_logprobs)[mask].abs().max().item() > 1e-2  # the policy moved
    if run == "ppo-offload":
        assert got["ref_param_devices"] == {"cpu"}  # parked in host memory between forwards
        assert _max_diff(got["weights"], results["dp1"]["ppo"]["weights"]) == 0.0


def test_resume_rebuilds_the_reference_from_the_base_checkpoint(tiny_qwen3_dirs, tmp_path) -> None:
    got = run_ranks(_resume_body, 1, str(tiny_qwen3_dirs["untied"]), str(tmp_path / "ckpt"), timeout=400)[0]
    assert got == {"reference_rebuilt": True, "policy_restored": True, "policy_moved": True}
