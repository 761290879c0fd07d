"""`s2l plan` on the shipped configs against hand-computed Qwen3 numbers (the formulas of
megatron_s2l/plan/memory.py; parameters per rank against Megatron itself:
tests/integration/test_plan_params.py)."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

import pytest

from megatron_s2l.archs import load_arch
from megatron_s2l.plan.cli import EXIT_DOES_NOT_FIT, add_arguments, run

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]
CONFIG_8B = str(ROOT / "yaml" / "qwen3-8b-s2l.yaml")  # TP 2 x DP 4, distributed optimizer, recompute
CONFIG_14B = str(ROOT / "yaml" / "qwen3-14b-s2l.yaml")  # TP 4 x DP 2
GIB = 2**30

# Qwen3-8B at TP 2 (docs/design.md 5: hidden 4096, 36 layers, 32 Q heads, 8 KV heads, head_dim 128,
# FFN 12288, vocab 151936, untied), worked out by hand:
#   layer matmuls: q, o 2 x 4096 x 4096 = 33,554,432; k, v 2 x 4096 x 1024 = 8,388,608;
#                  gate, up, down 3 x 4096 x 12288 = 150,994,944 -> 192,937,984, / TP 2 = 96,468,992
#   layer norms (not split over TP): 2 x 4096 + q_norm, k_norm 2 x 128 = 8,448
#   36 layers: 36 x 96,477,440 = 3,473,187,840
#   vocabulary padded to a multiple of 128 x TP 2 = 256: 151,936 -> 152,064; / TP 2 = 76,032 rows
#   embedding + output layer: 2 x 76,032 x 4096 = 622,854,144; final norm 4,096
PARAMS_8B_TP2 = 3_473_187_840 + 622_854_144 + 4_096  # = 4,096,046,080


def plan(capsys: pytest.CaptureFixture[str], config: str, *overrides: str) -> tuple[int, dict]:
    """(exit status, JSON) of `s2l plan --config CONFIG OVERRIDES --json`."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    status = run(parser.parse_args(["--config", config, *overrides, "--json"]))
    return status, json.loads(capsys.readouterr().out)


def state_gib(learner: dict) -> float:
    """Weights + gradients + optimizer: what the memory figures of docs/design.md 5 count."""
    return sum(learner["gib"][name] for name in ("weights", "grads", "optimizer"))


def test_8b_at_tp2_parameters_and_fit(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = plan(capsys, CONFIG_8B)
    assert status == 0 and out["fits"] and out["reasons"] == []
    learner = out["learner"]
    assert learner["params_per_gpu"] == PARAMS_8B_TP2 == 4_096_046_080
    assert learner["padded_vocab"] == 152_064
    # docs/design.md 5: 8B at TP 2, DP 4 ~34 GiB before activations: 4,096,046,080 x (6 + 12/4) bytes
    assert state_gib(learner) == pytest.approx(PARAMS_8B_TP2 * 9 / GIB) == pytest.approx(34.33, abs=0.01)
    assert learner["total_gib"] == pytest.approx(sum(learner["gib"].values()))
    assert out["gpus"] == {"learner": 8, "engines": 3 * 2 + 2 * 1, "total": 16}
    assert any("bundled qwen3-8b" in note for note in out["notes"])  # /models/... is absent here


def test_activation_and_logit_terms(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = plan(capsys, CONFIG_8B)
    gib = out["learner"]["gib"]
    s, b, h = 2048 + 8192, 2, 4096  # max_prompt_tokens + max_new_tokens; micro-batch; hidden
    # full recompute: 36 bf16 layer inputs + one layer recomputed (Korthikanti: sbh x (10 + 24/TP))
    assert gib["activations"] * GIB == pytest.approx(36 * 2 * s * b * h + s * b * h * (10 + 24 / 2))
    assert gib["logits"] * GIB == pytest.approx(b * s * 76_032 * 2)  # one bf16 copy of V/TP
    _, out = plan(capsys, CONFIG_8B, "learner.recompute_activations=false")
    assert out["learner"]["gib"]["activations"] * GIB == pytest.approx(36 * s * b * h * (10 + 24 / 2))
    # A token budget bounds the micro-batch's tokens instead (never below one longest sequence).
    for budget, tokens in ((16_384, 16_384), (4_096, s)):
        _, out = plan(capsys, CONFIG_8B, f"learner.parallel.max_tokens_per_micro_batch={budget}")
        assert out["learner"]["gib"]["logits"] * GIB == pytest.approx(tokens * 76_032 * 2)
        assert out["learner"]["gib"]["activations"] * GIB == pytest.approx(
            36 * 2 * tokens * h + tokens * h * (10 + 24 / 2)
        )


def test_an_update_smaller_than_a_micro_batch_is_planned_as_one(capsys: pytest.CaptureFixture[str]) -> None:
    """4 prompts x G 8 = 32 rows over DP 4: 8 rows per rank, one micro-batch of 8 (not 64, not 0)."""
    s = 2048 + 8192
    fixed = ("learner.parallel.max_tokens_per_micro_batch=null", "algo.ppo_mini_batch_prompts=4")
    for micro, rows, count in ((64, 8, 1), (4, 4, 2)):
        _, out = plan(capsys, CONFIG_8B, *fixed, f"learner.parallel.micro_batch_size={micro}")
        setup = out["learner"]["setup"]
        assert (setup["micro_batch_size"], setup["micro_batches"]) == (rows, count)
        assert setup["tokens_per_micro_batch"] == rows * s


def test_fused_output_layer_plans_one_chunk_of_logits(capsys: pytest.CaptureFixture[str]) -> None:
    from megatron_s2l.kernels import default_chunk_size

    _, plain = plan(capsys, CONFIG_8B)
    _, fused = plan(capsys, CONFIG_8B, "learner.fused_output_layer=true")
    tokens = plain["learner"]["setup"]["tokens_per_micro_batch"]
    chunk = default_chunk_size(tokens, 4096, 76_032)
    assert 0 < chunk < tokens
    # one bf16 chunk of logits + the fp32 accumulator of the [V/TP, H] weight gradient
    assert fused["learner"]["gib"]["logits"] * GIB == pytest.approx(chunk * 76_032 * 2 + 76_032 * 4096 * 4)
    assert fused["learner"]["total_gib"] < plain["learner"]["total_gib"]


def test_14b_at_tp1_dp8_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = plan(capsys, CONFIG_14B, "learner.parallel.tensor_parallel=1", "ranks=8")
    assert status == EXIT_DOES_NOT_FIT and not out["fits"]
    learner = out["learner"]
    assert learner["setup"]["dp"] == 8
    assert learner["params_per_gpu"] == 14_768_307_200  # vocab 151,936 is already a multiple of 128
    # docs/design.md 5: 14B at TP 1, DP 8 ~103 GiB before activations: x (6 + 12/8) bytes
    assert state_gib(learner) == pytest.approx(14_768_307_200 * 7.5 / GIB) == pytest.approx(103.15, abs=0.01)
    [reason] = out["reasons"]
    assert reason.startswith("learner (qwen3-14b, TP 1 x PP 1 x DP 8)")
    assert f"{learner['total_gib']:.1f} GiB per GPU > 80 GiB" in reason and "14,768,307,200" in reason


def test_table_names_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--config", CONFIG_14B, "learner.parallel.tensor_parallel=1"])
    assert run(args) == EXIT_DOES_NOT_FIT
    text = capsys.readouterr().out
    assert "parameters per GPU: 14,768,307,200" in text
    assert "does NOT fit:\n  - learner (qwen3-14b, TP 1 x PP 1 x DP 8)" in text


def test_14b_at_tp4_fits(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = plan(capsys, CONFIG_14B)
    assert status == 0 and out["learner"]["setup"]["tp"] == 4
    # docs/design.md 5: 14B at TP 4, DP 2 ~41 GiB before activations
    assert state_gib(out["learner"]) == pytest.approx(41.3, abs=0.1)


def test_distributed_optimizer_shards_the_optimizer_states(capsys: pytest.CaptureFixture[str]) -> None:
    params = PARAMS_8B_TP2
    _, on = plan(capsys, CONFIG_8B)
    _, off = plan(capsys, CONFIG_8B, "learner.parallel.distributed_optimizer=false")
    # fp32 master, Adam m and v: 12 bytes, over DP 4 with the distributed optimizer
    assert on["learner"]["gib"]["optimizer"] * GIB == pytest.approx(params * 12 / 4)
    assert off["learner"]["gib"]["optimizer"] * GIB == pytest.approx(params * 12)
    assert state_gib(on["learner"]) * GIB == pytest.approx(params * (6 + 12 / 4))
    assert state_gib(off["learner"]) * GIB == pytest.approx(params * 18)
    _, fp32 = plan(capsys, CONFIG_8B, "learner.params_dtype=float32")
    assert state_gib(fp32["learner"]) * GIB == pytest.approx(params * (4 + 4 + 8 / 4))  # no master copy


def test_reference_on_the_gpu_or_offloaded(capsys: pytest.CaptureFixture[str]) -> None:
    _, plain = plan(capsys, CONFIG_8B)
    _, resident = plan(capsys, CONFIG_8B, "algo.loss.kl_coef=0.001")
    _, offloaded = plan(capsys, CONFIG_8B, "algo.loss.kl_coef=0.001", "learner.reference_offload=true")
    weights = plain["learner"]["gib"]["weights"]
    assert resident["learner"]["gib"]["reference"] == pytest.approx(weights)
    assert resident["learner"]["total_gib"] == pytest.approx(plain["learner"]["total_gib"] + weights)
    assert offloaded["learner"]["gib"]["reference"] == 0
    # the peak is the reference's forward: its weights (7.6 GiB) replace the training activations (7.3)
    plain_total, activations = plain["learner"]["total_gib"], plain["learner"]["gib"]["activations"]
    assert weights > activations
    assert offloaded["learner"]["total_gib"] == pytest.approx(plain_total - activations + weights)


def test_engine_kv_tokens_and_sequences(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = plan(capsys, CONFIG_8B)
    learner_pool, explorer_pool = out["engines"]
    # qwen3-8b at TP 2: weights 8,190,735,360 params x 2 bytes / 2; KV per token: K and V x 36 layers
    # x 8/2 KV heads x 128 x 2 bytes = 73,728
    budget = 0.8 * 80 * GIB - 8_190_735_360
    assert learner_pool["kv_tokens"] == budget // 73_728 == 820_973
    assert learner_pool["sequences_at_once"] == 820_973 // 10_240 == 80
    assert explorer_pool["arch"] == "qwen3-1.7b" and explorer_pool["tp"] == 1
    _, capped = plan(capsys, CONFIG_8B, "rollout.learner.engine.context_length=4096")
    assert capped["engines"][0]["seq_tokens"] == 4096


def test_engine_weights_over_the_static_fraction(capsys: pytest.CaptureFixture[str]) -> None:
    # 14B at TP 1: 29.5 GB of bf16 weights > 0.3 x 80 GiB
    status, out = plan(
        capsys, CONFIG_14B, "rollout.learner.engine.tp=1", "rollout.learner.engine.mem_fraction_static=0.3"
    )
    assert status == EXIT_DOES_NOT_FIT and out["learner"]["fits"]
    assert out["engines"][0]["sequences_at_once"] == 0
    assert out["reasons"] == [
        "learner engines (qwen3-14b, TP 1): weights 27.5 GiB per GPU exceed mem_fraction_static "
        "0.3 x 80 GiB = 24.0 GiB"
    ]


def test_grpo_plans_no_explorer_pool(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = plan(capsys, str(ROOT / "yaml" / "qwen3-8b-grpo.yaml"))
    assert [e["pool"] for e in out["engines"]] == ["learner"]


def test_model_paths(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    checkpoint = tmp_path / "step-100"  # a name no bundled architecture matches
    checkpoint.mkdir()
    shutil.copy(ROOT / "megatron_s2l" / "archs" / "qwen3-8b.json", checkpoint / "config.json")
    _, out = plan(capsys, CONFIG_8B, f"model.learner={checkpoint}")
    assert out["learner"]["params_per_gpu"] == PARAMS_8B_TP2
    assert not any("model.learner" in note for note in out["notes"])
    with pytest.raises(ValueError, match="names no bundled architecture"):
        plan(capsys, CONFIG_8B, f"model.learner={tmp_path / 'absent'}")


def test_train_refuses_a_run_that_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`s2l train`'s pre-flight prints the plan and refuses 14B at TP 1 x DP 8 on 80 GiB GPUs; the
    same checkpoint at TP 4 x DP 2 passes (what preflight does when CUDA is present)."""
    from megatron_s2l import archs
    from megatron_s2l.archs import bundled_names
    from megatron_s2l.config import load_config
    from megatron_s2l.configio import ConfigError
    from megatron_s2l.train_cli import check_memory_plan

    assert "qwen3-14b" in bundled_names()
    model = tmp_path / "Qwen3-14B-Base"
    model.mkdir()
    bundled = Path(archs.__file__).with_name("qwen3-14b.json")
    (model / "config.json").write_text(bundled.read_text())
    base = [f"model.learner={model}", "schedule.t_mix=0"]
    tp1 = load_config(ROOT / "yaml/qwen3-14b-s2l.yaml", [*base, "learner.parallel.tensor_parallel=1"])
    refused = r"does not fit in GPU memory[\s\S]*Qwen3-14B-Base, TP 1 x PP 1 x DP 8"
    with pytest.raises(ConfigError, match=refused):
        check_memory_plan(tp1, 80.0)
    assert "does NOT fit" in capsys.readouterr().out
    check_memory_plan(load_config(ROOT / "yaml/qwen3-14b-s2l.yaml", base), 80.0)
    assert "fits" in capsys.readouterr().out


CONFIG_32B = str(ROOT / "yaml" / "qwen3-32b-s2l.yaml")  # TP 8 x PP 2 over two nodes


def test_32b_layout_fits_with_two_pipeline_stages(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = plan(capsys, CONFIG_32B)
    assert status == 0 and out["fits"], out["reasons"]
    setup = out["learner"]["setup"]
    assert (setup["tp"], setup["pp"], setup["dp"]) == (8, 2, 1)
    assert out["gpus"] == {"learner": 16, "engines": 6 * 4 + 8, "total": 48}
    assert len(out["learner"]["params_per_stage"]) == 2
    status, out = plan(capsys, CONFIG_32B, "ranks=8", "learner.parallel.pipeline_parallel=1")
    assert status == EXIT_DOES_NOT_FIT, "one node cannot hold the 32B learner: the header says so"


def test_colocated_per_gpu_totals_with_and_without_offload(capsys: pytest.CaptureFixture[str]) -> None:
    """8B at TP 2 x DP 4 (distributed optimizer), 3 learner engines of TP 2 on the learner's GPUs:
    by hand, resident = weights 2 + grads 4 + optimizer 12 / DP 4 bytes per parameter; offloaded,
    only the weights; the engine's pool is mem_fraction_static x (80 GiB - resident) (SGLang sizes it
    from the memory free at its start)."""
    status, out = plan(capsys, CONFIG_8B, "rollout.colocate=true")
    assert status == 0, out["reasons"]
    assert out["gpus"] == {"learner": 8, "engines": 2, "total": 10}  # only the explorer's own GPUs
    resident = PARAMS_8B_TP2 * (2 + 4 + 12 / 4) / GIB
    weights = PARAMS_8B_TP2 * 2 / GIB
    without, with_ = out["colocated"]["without_offload"], out["colocated"]["with_offload"]
    assert without["learner_resident_gib"] == pytest.approx(resident)
    assert with_["learner_resident_gib"] == pytest.approx(weights)
    assert with_["host_gib"] == pytest.approx(resident - weights)
    for layout, held in ((without, resident), (with_, weights)):
        assert layout["rollout_gib"] == pytest.approx(held + 0.8 * (80 - held))
        assert layout["training_gib"] == pytest.approx(out["learner"]["total_gib"])
        engine_weights = 8_190_735_360 * 2 / 2 / GIB  # Qwen3-8B parameters, bf16, TP 2
        assert layout["engine"]["kv_cache_gib"] == pytest.approx(0.8 * (80 - held) - engine_weights)
    assert with_["engine"]["kv_tokens"] > without["engine"]["kv_tokens"]
    assert out["engines"][0] == without["engine"], "the configured layout (no offload) is the one planned"


def test_colocated_plan_says_what_to_offload(capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's example: 8B at TP 1 x DP 8 with one engine per GPU. At mem_fraction_static 0.5 the
    engine's share of what the resident learner leaves is smaller than its weights; with the
    gradients and optimizer state offloaded it fits."""
    overrides = [
        "learner.parallel.tensor_parallel=1",
        "rollout.colocate=true",
        "rollout.learner.num_engines=8",
        "rollout.learner.engine.tp=1",
        "rollout.learner.engine.mem_fraction_static=0.5",
    ]
    status, out = plan(capsys, CONFIG_8B, *overrides)
    assert status == EXIT_DOES_NOT_FIT
    assert any("colocated learner engine" in r for r in out["reasons"])
    assert any("learner.offload_during_rollout=true" in r for r in out["reasons"])
    status, out = plan(capsys, CONFIG_8B, *overrides, "learner.offload_during_rollout=true")
    assert status == 0 and out["colocated"]["offload_configured"], out["reasons"]


def test_placement_note_is_not_the_stale_one(capsys: pytest.CaptureFixture[str]) -> None:
    _, out = plan(capsys, CONFIG_8B)
    assert not any("places no engine on a GPU" in note for note in out["notes"])
    assert any("after its learner ranks'" in note for note in out["notes"])


CONFIG_SMOKE = str(ROOT / "yaml" / "smoke-1node.yaml")  # one 8-GPU node, 1.7B learner + 0.6B explorer


def test_single_node_smoke_fits_one_node(capsys: pytest.CaptureFixture[str]) -> None:
    """Learner ranks and engines together take the node's 8 GPUs, no more: the trainer starts the
    engines on the GPUs after the learner ranks' (rollout/engines.py), so they must fit beside them."""
    status, out = plan(capsys, CONFIG_SMOKE)
    assert status == 0 and out["fits"] and out["reasons"] == [], out["reasons"]
    assert out["gpus"] == {"learner": 4, "engines": 3 + 1, "total": 8}
    assert out["learner"]["params_per_gpu"] == load_arch("qwen3-1.7b").param_count()  # TP 1: all of it


SHARED = ["rollout.explorer.placement=shared"]
UNSET = [
    "rollout.learner.engine.mem_fraction_static=null",
    "rollout.explorer.engine.mem_fraction_static=null",
]
LEARNER_KEY = "rollout.learner.engine.mem_fraction_static"
EXPLORER_KEY = "rollout.explorer.engine.mem_fraction_static"
R = 10 / 80  # SGLang's 10 GiB per engine on 80 GiB: 0.125 of the GPU
FREE = 1 - 2 * R  # what both pools may take together: 0.75
P17 = load_arch("qwen3-1.7b").param_count()
KV = {"learner": 2 * 36 * 4 * 128 * 2, "explorer": 2 * 28 * 8 * 128 * 2}  # per GPU: 73,728; 114,688
# 8B (3 engines x TP 2) with the 1.7B explorer (2 x TP 1) on its GPUs: each engine needs its weights
# per GPU and one sequence (2,048 + 8,192 tokens) of KV cache, as a fraction of 80 GiB
NEEDED = {
    "learner": (8_190_735_360 + 10_240 * KV["learner"]) / (80 * GIB),  # 0.104
    "explorer": (P17 * 2 + 10_240 * KV["explorer"]) / (80 * GIB),  # 0.054
}


def floor3(x: float) -> float:
    return math.floor(x * 1000) / 1000


def configured(learner: float | None, explorer: float | None) -> list[str]:
    """Overrides that set both mem_fraction_static values (None: unset)."""
    values = {LEARNER_KEY: learner, EXPLORER_KEY: explorer}
    return [f"{key}={'null' if value is None else value}" for key, value in values.items()]


def test_shared_placement_both_unset_by_hand(capsys: pytest.CaptureFixture[str]) -> None:
    """Both unset: the learner gets its need plus its share of the rest (0.75 of 80 GiB less both
    needs) in proportion to its KV demand over the run (samples x 8,192 tokens x TP x KV bytes per
    token per GPU), rounded down; the explorer what is left, 0.75 - learner of the GPU, as its
    mem_fraction_static: that over what the learner engine leaves, 1 - learner - 0.125, rounded down
    (SGLang sizes the explorer, started second, from the memory free then)."""
    status, out = plan(capsys, CONFIG_8B, *SHARED, *UNSET)
    assert status == 0 and out["fits"], out["reasons"]
    # Algorithm 1 over 300 steps, T_mix 100, G 8: G_w = ceil((100 - i) x 8 / 99) at steps 1..99
    explorer_samples = sum(-(-(100 - i) * 8 // 99) for i in range(1, 100))
    samples = {"explorer": explorer_samples, "learner": 300 * 8 - explorer_samples}
    demand = {name: samples[name] * 8192 * {"learner": 2, "explorer": 1}[name] * KV[name] for name in KV}
    spare = FREE - sum(NEEDED.values())
    learner = floor3(NEEDED["learner"] + spare * demand["learner"] / sum(demand.values()))
    assert learner == 0.606
    base = 1 - learner - R  # 0.269 of the GPU free when the explorer starts
    settings = {"learner": 0.606, "explorer": floor3((FREE - learner) / base)}
    assert settings["explorer"] == 0.535  # 0.144 of the GPU / 0.269
    shared = out["shared"]
    assert shared["needed"] == pytest.approx(NEEDED)
    assert shared["settings"] == settings and shared["explorer_base"] == pytest.approx(base)
    assert shared["fractions"] == pytest.approx({"learner": 0.606, "explorer": 0.535 * base})
    assert shared["computed"] == {"learner": True, "explorer": True}
    assert FREE - 0.001 < sum(shared["fractions"].values()) <= FREE  # all of it, less rounding down
    learner_pool, explorer_pool = out["engines"]  # the table shows the values to configure
    assert (learner_pool["mem_fraction_static"], explorer_pool["mem_fraction_static"]) == (0.606, 0.535)
    assert explorer_pool["kv_tokens"] == int((0.535 * base * 80 * GIB - P17 * 2) // KV["explorer"])
    assert out["gpus"] == {"learner": 8, "engines": 6, "total": 14}  # the explorer has no GPU of its own
    # an explorer whose share is under a rounding step (T_mix 2: samples at step 1 only; short
    # responses) still gets its need: the learner's rounding leaves it a step above it
    for response in (256, 1024):
        overrides = ["schedule.t_mix=2", f"rollout.explorer_sampling.max_new_tokens={response}"]
        status, out = plan(capsys, CONFIG_8B, *SHARED, *UNSET, *overrides)
        shared = out["shared"]
        assert status == 0 and shared["fractions"]["explorer"] >= shared["needed"]["explorer"], out["reasons"]
        assert FREE - 0.001 < sum(shared["fractions"].values()) <= FREE


@pytest.mark.parametrize(
    ("learner", "explorer", "settings", "fractions"),
    [
        # both set (the run's case): the explorer's is of the 1 - 0.6 - 0.125 = 0.275 the learner leaves
        (0.6, 0.5, {"learner": 0.6, "explorer": 0.5}, {"learner": 0.6, "explorer": 0.5 * 0.275}),
        # learner set: the explorer takes the 0.75 - 0.6 = 0.15 left, 0.15 / 0.275 = 0.5454... of 0.275
        (0.6, None, {"learner": 0.6, "explorer": 0.545}, {"learner": 0.6, "explorer": 0.545 * 0.275}),
        # explorer set: f_L = 0.75 - 0.4 x (1 - f_L - 0.125), so f_L = (0.75 - 0.35) / 0.6 = 0.6666...
        (None, 0.4, {"learner": 0.666, "explorer": 0.4}, {"learner": 0.666, "explorer": 0.4 * 0.209}),
    ],
)
def test_shared_placement_configured_by_hand(
    capsys: pytest.CaptureFixture[str],
    learner: float | None,
    explorer: float | None,
    settings: dict[str, float],
    fractions: dict[str, float],
) -> None:
    for _ in range(2):  # a second plan gives the same
        status, out = plan(capsys, CONFIG_8B, *SHARED, *configured(learner, explorer))
        assert status == 0 and out["fits"], out["reasons"]
        shared = out["shared"]
        assert shared["settings"] == settings and shared["fractions"] == pytest.approx(fractions)
        assert shared["computed"] == {"learner": learner is None, "explorer": explorer is None}
        if None in (learner, explorer):  # the unset one took what was left (less rounding)
            assert FREE - 0.001 < sum(fractions.values()) <= FREE
        assert [e["mem_fraction_static"] for e in out["engines"]] == [
            settings["learner"],
            settings["explorer"],
        ]


def test_shared_placement_reads_the_explorer_value_as_sglang_does(capsys: pytest.CaptureFixture[str]) -> None:
    """Beside a learner at 0.6 the explorer gets its value of the 0.275 left: 0.15 would fit as a
    fraction of the GPU (0.6 + 0.15 = 0.75, 0.15 >= its 0.054) but gives it 0.041, short of its
    weights and one sequence; 0.545 (0.15 of the GPU) is the most that fits, though 0.6 + 0.545 > 0.75."""
    status, out = plan(capsys, CONFIG_8B, *SHARED, *configured(0.6, 0.15))
    assert status == EXIT_DOES_NOT_FIT
    (reason,) = out["reasons"]
    assert reason == (
        f"rollout.explorer.placement shared: {EXPLORER_KEY} 0.15 (of the memory the learner engines "
        f"leave, 0.275 of the GPU's) gives the explorer engine {0.15 * 0.275:.3f} of GPU memory, less than "
        f"the {NEEDED['explorer']:.3f} its weights and one sequence's KV cache need"
    )
    status, out = plan(capsys, CONFIG_8B, *SHARED, *configured(0.6, 0.545))
    assert status == 0 and out["fits"], out["reasons"]
    status, out = plan(capsys, CONFIG_8B, *SHARED, *configured(0.6, 0.546))  # 0.6 + 0.15015 > 0.75
    assert status == EXIT_DOES_NOT_FIT
    (reason,) = out["reasons"]
    assert f"0.600 + {0.546 * 0.275:.3f} = {0.6 + 0.546 * 0.275:.3f} of GPU memory, more than fits" in reason


@pytest.mark.parametrize("config", [CONFIG_8B, CONFIG_14B])
@pytest.mark.parametrize("given", [(None, None), (0.5, None), (None, 0.6)])
def test_shared_placement_suggested_values_round_trip(
    capsys: pytest.CaptureFixture[str], config: str, given: tuple[float | None, float | None]
) -> None:
    """The values s2l plan computes, configured as they are, give the same memory to each pool."""
    status, out = plan(capsys, config, *SHARED, *configured(*given))
    assert status == 0, out["reasons"]
    suggested = out["shared"]
    for _ in range(2):
        status, out = plan(capsys, config, *SHARED, *configured(**suggested["settings"]))
        assert status == 0 and out["shared"]["settings"] == suggested["settings"]
        assert out["shared"]["fractions"] == pytest.approx(suggested["fractions"], abs=1e-12)
        assert out["shared"]["computed"] == {"learner": False, "explorer": False}


def test_shared_placement_refusals_name_the_keys(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = plan(capsys, CONFIG_8B, *SHARED)  # the yaml's 0.8 + 0.8
    assert status == EXIT_DOES_NOT_FIT
    (reason,) = out["reasons"]
    assert reason.startswith("rollout.explorer.placement shared: ")
    assert (
        f"with {LEARNER_KEY} 0.8 and {EXPLORER_KEY} 0.8 (of the memory the learner engines leave, 0.075 of "
        "the GPU's) the two pools take 0.800 + 0.060 = 0.860 of GPU memory" in reason
    )
    # what the reason suggests is what s2l plan computes, and fits when configured
    _, unset = plan(capsys, CONFIG_8B, *SHARED, *UNSET)
    computed = unset["shared"]["settings"]
    suggestion = f"{LEARNER_KEY}={computed['learner']:g} and {EXPLORER_KEY}={computed['explorer']:g}"
    assert reason.endswith(f"(unset both and s2l plan computes {suggestion})")
    status, out = plan(capsys, CONFIG_8B, *SHARED, *suggestion.split(" and "))
    assert status == 0 and out["shared"]["fractions"] == pytest.approx(
        unset["shared"]["fractions"], abs=1e-12
    )
    # one set: the other takes what is left, here less than the explorer needs
    status, out = plan(capsys, CONFIG_8B, *SHARED, *configured(0.7, None))
    assert status == EXIT_DOES_NOT_FIT and out["shared"]["settings"]["explorer"] == floor3(0.05 / 0.175)
    assert any(
        f"{EXPLORER_KEY} 0.285 (computed; of the memory the learner engines leave, 0.175 of the GPU's) gives "
        "the explorer engine 0.050 of GPU memory" in r
        for r in out["reasons"]
    )
    # an explorer that alone takes more than both may: no learner value is left
    status, out = plan(capsys, CONFIG_8B, *SHARED, *configured(None, 0.9))
    assert status == EXIT_DOES_NOT_FIT and out["shared"]["settings"] == {"learner": 0.0, "explorer": 0.9}
    assert any(f"{LEARNER_KEY} 0 (computed) gives the learner engine 0.000" in r for r in out["reasons"])
    # a learner that leaves the explorer nothing (1 - 0.9 - 0.125 < 0)
    status, out = plan(capsys, CONFIG_8B, *SHARED, *configured(0.9, None))
    assert status == EXIT_DOES_NOT_FIT and out["shared"]["explorer_base"] == 0.0
    assert out["shared"]["settings"]["explorer"] == 0.0
    # the explorer's TP must divide the learner's; at most one explorer engine per learner GPU
    status, out = plan(capsys, CONFIG_8B, *SHARED, *UNSET, "rollout.explorer.engine.tp=4")
    assert status == EXIT_DOES_NOT_FIT
    assert any(
        "rollout.explorer.engine.tp (4) must divide rollout.learner.engine.tp (2)" in r
        for r in out["reasons"]
    )
    status, out = plan(capsys, CONFIG_8B, *SHARED, *UNSET, "rollout.explorer.num_engines=7")
    assert any("need 7 GPUs, the learner engines have 6" in r for r in out["reasons"])
    # 24 GiB GPUs: 4 GiB left for both pools, less than the two engines' weights
    status, out = plan(capsys, CONFIG_14B, *SHARED, *UNSET, "--gpu-mem-gib", "24")
    assert any("the two engines do not fit on one GPU" in r for r in out["reasons"])
    assert out["shared"]["settings"]["explorer"] == 0.0  # the learner's need alone is over the 0.167


def test_preflight_refuses_a_shared_placement_that_does_not_fit(capsys: pytest.CaptureFixture[str]) -> None:
    """What `s2l train` runs before any server starts (on a GPU node): the memory plan, which carries
    `shared_placement_reasons`."""
    from megatron_s2l.config import load_config
    from megatron_s2l.configio import ConfigError
    from megatron_s2l.plan.memory import shared_placement_reasons
    from megatron_s2l.train_cli import check_memory_plan

    names = ["model.learner=qwen3-8b", "model.explorer=qwen3-1.7b"]
    cfg = load_config(CONFIG_8B, [*names, *SHARED])
    learner, explorer = load_arch("qwen3-8b"), load_arch("qwen3-1.7b")
    (reason,) = shared_placement_reasons(cfg, learner, explorer, 80.0)
    with pytest.raises(ConfigError) as refused:
        check_memory_plan(cfg, 80.0)
    assert reason in str(refused.value)
    capsys.readouterr()
    assert shared_placement_reasons(load_config(CONFIG_8B, names), learner, explorer, 80.0) == []
    check_memory_plan(load_config(CONFIG_8B, [*names, *SHARED, *UNSET]), 80.0)
    assert "shared (rollout.explorer.placement)" in capsys.readouterr().out
