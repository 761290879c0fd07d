"""Golden curve (torchtitan's tests/assets/losses): a learner-only run on fixed batches, its loss and
grad norm per optimizer update stored in tests/assets/golden_learner_cpu.json. A change meant to
keep the numerics must reproduce them; one that changes them on purpose regenerates the file:

    S2L_UPDATE_GOLDEN=1 .venv/bin/pytest tests/integration/test_golden_curve.py

One gloo rank, float32, the tiny untied Qwen3 of the learner tests, 3 steps x 2 PPO mini-batches
with clip-higher, dual clip and the KL loss. Tolerance 1e-5 relative: CPU float32 matmuls may
reduce in another order on another CPU; a real change of the maths moves these numbers far more.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from distributed_utils import run_ranks
from test_learner_ppo import grouped_batch

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).resolve().parents[1] / "assets" / "golden_learner_cpu.json"
STEPS = 3


def _run(rank: int, world_size: int, hf_dir: str) -> list[dict[str, float]]:
    from megatron_s2l.algo import ppo_mini_batch_rows
    from megatron_s2l.algo.loss import LossConfig
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    cfg = LearnerConfig(
        parallel=ParallelConfig(micro_batch_size=4),
        optimizer=OptimizerConfig(
            lr=3e-3, adam_eps=1e-3, warmup_steps=1, decay_steps=8, lr_schedule="cosine"
        ),
        vocab_pad_multiple=48,
    )
    loss = LossConfig(clip_low=0.2, clip_high=0.28, clip_c=3.0, kl_coef=0.05)
    learner = Learner.from_hf(cfg, hf_dir, loss=loss, temperature=0.9)
    batch = grouped_batch(learner.arch.vocab_size)
    curve = []
    for step in range(1, STEPS + 1):
        batch.old_logprobs = learner.compute_logprobs(batch)
        batch.ref_logprobs = learner.compute_ref_logprobs(batch)
        for rows in ppo_mini_batch_rows(4, 4, 2, epochs=1, seed=0, step=step):
            metrics = learner.train_step(batch.select(rows))
            curve.append({key: metrics[key] for key in ("loss", "kl", "grad_norm", "lr")})
    return curve


def test_learner_matches_its_golden_curve(tiny_qwen3_dirs) -> None:
    curve = run_ranks(_run, 1, str(tiny_qwen3_dirs["untied"]), timeout=400)[0]
    if os.environ.get("S2L_UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(curve, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())
    assert len(curve) == len(golden) == 2 * STEPS
    for update, (got, want) in enumerate(zip(curve, golden, strict=True)):
        for key, value in want.items():
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), (update, key)
    assert golden[-1]["loss"] != golden[0]["loss"]  # the curve moves: it is not a constant
