"""HF -> Megatron at TP=1, TP=2 and PP=2 (gloo ranks): log-probs equal transformers' and the
exported checkpoint is bit-exact and loads in transformers. Tied and untied embeddings, a single
file and a sharded index. Needs 0 GPUs.

    .venv/bin/pytest tests/integration/test_learner_hf_roundtrip.py
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distributed_utils import run_ranks
from safetensors import safe_open

pytestmark = pytest.mark.slow

# name -> (checkpoint, tensor_parallel, pipeline_parallel); world size tp * pp. The layouts of a
# world size run one after another in the same ranks (one spawn per world size).
LAYOUTS = {
    "tp1-untied": ("untied", 1, 1),
    "tp2-untied": ("untied", 2, 1),
    "pp2-tied": ("tied", 1, 2),
    "tp2-tied": ("tied", 2, 1),
}


HOT = 0.7  # a rollout temperature: logits are divided by it before the log-softmax


def _sequences(vocab_size: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(7)
    return torch.randint(0, vocab_size, (4, 13), generator=generator)


def _rank_body(rank: int, world_size: int, runs: list[tuple[str, int, int, str]]) -> list:
    from megatron_s2l.learner.batch import TrainBatch
    from megatron_s2l.learner.grpo_step import compute_logprobs
    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    results = []
    for hf_dir, tp, pp, out_dir in runs:
        # pad multiple 48: 512 -> 528 (TP=1) / 576 (TP=2), so padded vocabulary rows are exercised.
        cfg = LearnerConfig(
            parallel=ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp, micro_batch_size=2),
            vocab_pad_multiple=48,
        )
        learner = Learner.from_hf(cfg, hf_dir)
        input_ids = _sequences(learner.arch.vocab_size)
        batch = TrainBatch(input_ids=input_ids, loss_mask=torch.ones(4, 12), advantages=torch.zeros(4))
        logprobs, entropy = learner.compute_logprobs_and_entropy(batch)
        both, _ = compute_logprobs(
            learner.model,
            batch,
            vocab_size=learner.arch.vocab_size,
            temperatures=[1.0, HOT],
            micro_batch_size=2,
        )
        assert torch.equal(both[0], logprobs)  # one forward serves several temperatures
        hot_logprobs = both[1]
        names = [name for name, _ in learner.iter_hf_weights()]
        learner.export_hf(out_dir)
        results.append((logprobs, entropy, hot_logprobs, names, learner.layout.pp_rank))
    return results


@pytest.fixture(scope="module")
def runs(tiny_qwen3_dirs, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    """name -> (source dir, export dir, per-rank results)."""
    export_root = tmp_path_factory.mktemp("learner_export")
    out: dict[str, tuple] = {}
    for world in (1, 2):
        names = [n for n, (_, tp, pp) in LAYOUTS.items() if tp * pp == world]
        specs = [(str(tiny_qwen3_dirs[LAYOUTS[n][0]]), *LAYOUTS[n][1:], str(export_root / n)) for n in names]
        per_rank = run_ranks(_rank_body, world, specs, timeout=400)
        for i, name in enumerate(names):
            out[name] = (Path(specs[i][0]), Path(specs[i][3]), [rank_results[i] for rank_results in per_rank])
    return out


def _read_all(hf_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(hf_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                tensors[key] = f.get_tensor(key)
    return tensors


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_logprobs_match_transformers(name: str, runs) -> None:
    from transformers import AutoModelForCausalLM

    hf_dir, _, results = runs[name]
    hf_model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32)
    input_ids = _sequences(hf_model.config.vocab_size)
    with torch.no_grad():
        logits_BLV = hf_model(input_ids).logits.double()[:, :-1]
    targets_BL1 = input_ids[:, 1:, None]
    logp_BLV = logits_BLV.log_softmax(-1)
    expected = logp_BLV.gather(-1, targets_BL1).squeeze(-1)
    expected_entropy = -(logp_BLV.exp() * logp_BLV).sum(-1)
    expected_hot = (logits_BLV / HOT).log_softmax(-1).gather(-1, targets_BL1).squeeze(-1)
    for logprobs, entropy, hot_logprobs, _, _ in results:  # every rank gets the whole batch's values
        max_diff = (logprobs - expected).abs().max().item()
        print(f"{name}: max |logp - transformers| = {max_diff:.2e}")
        assert max_diff <= 1e-4
        assert (entropy - expected_entropy).abs().max().item() <= 1e-4
        assert (hot_logprobs - expected_hot).abs().max().item() <= 1e-4
    assert expected.std() > 0.5  # the distributions are far from uniform: the check has teeth


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_export_round_trip_is_bit_exact(name: str, runs) -> None:
    from transformers import AutoModelForCausalLM

    hf_dir, out_dir, results = runs[name]
    original, exported = _read_all(hf_dir), _read_all(out_dir)
    assert exported.keys() == original.keys()
    for key, tensor in original.items():
        assert exported[key].dtype == tensor.dtype and torch.equal(exported[key], tensor), key
    # iter_hf_weights: same order on the ranks of a stage; stages disjoint and complete.
    by_stage: dict[int, list[str]] = {}
    for *_, names, pp_rank in results:
        assert by_stage.setdefault(pp_rank, names) == names
    all_names = [n for names in by_stage.values() for n in names]
    assert sorted(all_names) == sorted(original)
    AutoModelForCausalLM.from_pretrained(str(out_dir), dtype=torch.float32)  # loads without complaint
