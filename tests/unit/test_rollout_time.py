"""`s2l plan`'s rollout-time model (megatron_s2l/plan/rollout_time.py) against hand computations, its
throughput table and scaling (plan/throughput.py) against the published measurement it rests on and
hand formulas, and the calibration `s2l bench rollout --measured` writes and `s2l plan` reads."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from megatron_s2l.archs import bundled_names, load_arch
from megatron_s2l.bench.rollout_flops import decode_flops_per_token
from megatron_s2l.bench.rollout_measured import StepRecord, bench_engines, calibration_of
from megatron_s2l.cli import main
from megatron_s2l.config import load_config
from megatron_s2l.plan.throughput import (
    BANDWIDTH,
    H100_BF16_FLOPS,
    REFERENCE_CONTEXT,
    REFERENCE_POOL_GIB,
    THROUGHPUT,
    Calibration,
    Throughput,
    decode_rate,
    read_calibration,
    write_calibration,
)
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig, RolloutConfig

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]
CONFIG_8B = str(ROOT / "yaml" / "qwen3-8b-s2l.yaml")  # learner engines 3 x TP 2, explorer 2 x TP 1
GIB = 2**30
W_8B = 8_190_735_360 * 2  # Qwen3-8B bf16 weights (docs/design.md 5: 8.19e9 parameters)
KV_8B = 2 * 36 * 8 * 128 * 2  # K and V x 36 layers x 8 KV heads x head_dim 128 x 2 bytes = 147,456


# --- the throughput table --------------------------------------------------------------------------


def test_table_rests_on_the_measured_8b_run() -> None:
    """The 8B row is the published measurement (3,917.07 tok/s, 377,024 KV tokens, 2,048 + 2,048
    tokens); the bandwidth fitted to it predicts the same run's single-request decode, 6.998 ms per
    token, within 5% (an independent point of the same source)."""
    row = THROUGHPUT["qwen3-8b"]
    assert row.tokens_per_s == 3917.07 and "silybench" in row.source and row.tp == 1
    pool = W_8B + 377_024 * KV_8B  # = 71,975,921,664 bytes
    assert pytest.approx(pool) == REFERENCE_POOL_GIB * GIB
    assert REFERENCE_CONTEXT == 2048 + (2048 - 1) / 2
    assert decode_rate(load_arch("qwen3-8b"), 1, REFERENCE_POOL_GIB, REFERENCE_CONTEXT) == pytest.approx(
        3917.07
    )
    batch_one = (W_8B + REFERENCE_CONTEXT * KV_8B) / BANDWIDTH
    assert batch_one == pytest.approx(6.998e-3, rel=0.05)
    assert 0.6 < BANDWIDTH / 3.35e12 < 0.8  # a fraction of the H100's 3.35 TB/s, as decode reaches


def test_derived_rows_and_memory_bound() -> None:
    """Every other row is the model at the reference; at the reference a step's FLOPs at the H100's
    peak take under 10% of its memory time (the model's premise), and a larger model is slower."""
    rates = []
    for name in bundled_names():
        arch, row = load_arch(name), THROUGHPUT[name]
        if name != "qwen3-8b":
            assert row.source.startswith("derived") and row.tokens_per_s == pytest.approx(
                decode_rate(arch, 1, REFERENCE_POOL_GIB, REFERENCE_CONTEXT)
            )
        weights = arch.param_count() * 2
        kv = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * 2
        sequences = (REFERENCE_POOL_GIB * GIB - weights) / (kv * REFERENCE_CONTEXT)
        flops_time = sequences * decode_flops_per_token(arch, REFERENCE_CONTEXT) / H100_BF16_FLOPS
        assert flops_time < 0.1 * REFERENCE_POOL_GIB * GIB / BANDWIDTH, name
        rates.append(row.tokens_per_s)
    assert rates == sorted(rates, reverse=True)  # bundled_names: smallest first


def test_tp_and_pool_scaling_by_hand() -> None:
    """Per GPU at TP t the pool holds W/t of weights and the KV heads split t ways, so (memory-bound,
    same pool and context) the ratio to TP 1 is (pool - W/t) / (pool - W) x KV(1) / (t x KV(t));
    past 8 KV heads they are replicated (TP 16: one head per GPU, not half a head)."""
    arch, row, pool = load_arch("qwen3-8b"), THROUGHPUT["qwen3-8b"], REFERENCE_POOL_GIB * GIB
    assert row.at(arch, 1, REFERENCE_POOL_GIB, REFERENCE_CONTEXT) == pytest.approx(3917.07)
    assert row.at(arch, 2, REFERENCE_POOL_GIB, REFERENCE_CONTEXT) == pytest.approx(
        3917.07 * (pool - W_8B / 2) / (pool - W_8B)
    )
    kv_tp16 = 2 * 36 * 1 * 128 * 2
    assert row.at(arch, 16, REFERENCE_POOL_GIB, REFERENCE_CONTEXT) == pytest.approx(
        3917.07 * (pool - W_8B / 16) / (pool - W_8B) * KV_8B / (16 * kv_tp16)
    )
    # A pool half the size: fewer sequences, shorter steps; twice the context: half the sequences.
    half = REFERENCE_POOL_GIB / 2
    assert row.at(arch, 1, half, REFERENCE_CONTEXT) == pytest.approx(
        3917.07 * (pool / 2 - W_8B) / (pool - W_8B) * 2
    )
    assert row.at(arch, 1, REFERENCE_POOL_GIB, 2 * REFERENCE_CONTEXT) == pytest.approx(3917.07 / 2)
    assert row.at(arch, 1, W_8B / GIB, REFERENCE_CONTEXT) == 0.0  # weights fill the pool: no KV cache


# --- the rollout-time model ------------------------------------------------------------------------

# Engine GPUs 8: learner 3 x TP 2 = 6, explorer 2 x TP 1 = 2. T_mix 4, 8 steps, G 16, 4 prompts,
# responses of 100 tokens. Algorithm 1: G_w = ceil((4 - i) / 3 x 16) = 16, 11, 6 at steps 1-3, 0 after;
# mixing steps 1-3: mean G_w 11, mean G_s (0 + 5 + 10) / 3 = 5; after T_mix (steps 4-8): G_s 16.
SMALL = [
    "schedule.steps=8",
    "schedule.t_mix=4",
    "schedule.group_size=16",
    "schedule.prompts_per_step=4",
    "data.max_prompt_tokens=2048",
]
CONTEXT = 2048 + (100 - 1) / 2  # max_prompt_tokens + half the response: what the calibration is at
EXPLORER_TOKENS, LEARNER_TOKENS, AFTER_TOKENS = 4 * 11 * 100, 4 * 5 * 100, 4 * 16 * 100


def calibrated(tmp_path: Path, learner: float = 500.0, explorer: float = 1000.0) -> Path:
    """Figures measured at the layout's own TP, pool (0.8 x 80 GiB) and context: used as they are."""
    models = {
        "qwen3-8b": Throughput(learner, 2, 0.8 * 80, CONTEXT, "by hand"),
        "qwen3-1.7b": Throughput(explorer, 1, 0.8 * 80, CONTEXT, "by hand"),
    }
    return write_calibration(
        tmp_path / "calibration.json", Calibration("NVIDIA H100 80GB HBM3", 80.0, models)
    )


def plan_json(capsys: pytest.CaptureFixture[str], calibration: Path, *overrides: str) -> dict:
    argv = ["plan", "--config", CONFIG_8B, *SMALL, *overrides, "--calibration", str(calibration)]
    assert main([*argv, "--mean-response-tokens", "100", "--json"]) == 0
    return json.loads(capsys.readouterr().out)["rollout_time"]


def layout(out: dict, name: str) -> dict:
    (found,) = [t for t in out["layouts"] if t["layout"] == name]
    return found


def test_phases_and_dedicated_and_grpo_by_hand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = plan_json(capsys, calibrated(tmp_path))
    assert out["engine_gpus"] == 8 and out["configured"] == "dedicated"
    assert out["response_from"] == "--mean-response-tokens" and out["context"]["learner"] == CONTEXT
    mixing, after = out["phases"]
    assert (mixing["steps"], mixing["g_explorer"], mixing["g_learner"]) == ([1, 2, 3], 11, 5)
    assert (after["steps"], after["g_explorer"], after["g_learner"]) == ([4, 5, 6, 7, 8], 0, 16)
    assert (mixing["explorer_tokens"], mixing["learner_tokens"]) == (EXPLORER_TOKENS, LEARNER_TOKENS)
    assert after["learner_tokens"] == AFTER_TOKENS

    dedicated = layout(out, "dedicated")
    assert dedicated["rates"] == pytest.approx({"explorer": 1000.0, "learner": 500.0})
    mix, post = dedicated["phases"]
    # side by side: the explorer's 2 GPUs take 4,400 / 2,000 = 2.2 s, the learner's 6: 2,000 / 3,000
    assert (mix["explorer_gpus"], mix["learner_gpus"]) == (2, 6)
    assert (
        mix["seconds"] == pytest.approx(max(EXPLORER_TOKENS / (2 * 1000), LEARNER_TOKENS / (6 * 500))) == 2.2
    )
    # hand-over: the explorer's 2 GPUs hold one more learner engine of TP 2
    assert (post["explorer_gpus"], post["learner_gpus"], post["idle_gpus"]) == (0, 8, 0)
    assert post["seconds"] == pytest.approx(AFTER_TOKENS / (8 * 500)) == pytest.approx(1.6)
    assert dedicated["total_seconds"] == pytest.approx(3 * 2.2 + 5 * 1.6)

    grpo = layout(out, "grpo")
    assert [p["seconds"] for p in grpo["phases"]] == pytest.approx([1.6, 1.6])  # 4 x 16 x 100 / (8 x 500)
    assert grpo["total_seconds"] == pytest.approx(8 * 1.6)


def test_dedicated_without_hand_over_and_alternating(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    calibration = calibrated(tmp_path)
    out = plan_json(capsys, calibration, "rollout.explorer_hand_over=false")
    mix, post = layout(out, "dedicated")["phases"]
    assert mix["seconds"] == pytest.approx(2.2)
    assert (post["learner_gpus"], post["idle_gpus"]) == (6, 2)  # the explorer's GPUs idle
    assert post["seconds"] == pytest.approx(AFTER_TOKENS / (6 * 500))
    assert layout(out, "dedicated")["total_seconds"] == pytest.approx(3 * 2.2 + 5 * 6400 / 3000)
    # alternating: the explorer half-step, then the learner's: the pools take turns
    out = plan_json(capsys, calibration, "schedule.mode=alternating")
    assert layout(out, "dedicated")["phases"][0]["seconds"] == pytest.approx(2.2 + 2000 / 3000)


def test_shared_by_hand(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Both pools on all 8 GPUs (4 learner engines of TP 2, 8 explorer engines of TP 1) at the
    mem_fraction_static values s2l plan computes (the note: what to configure); the explorer's pool is
    its value of what the learner engine leaves, 1 - learner - 10/80 of 80 GiB. Each figure moved from
    0.8 x 80 GiB to its pool by (pool - W/t) / pool (memory-bound, same TP and context); a mixing step
    takes both pools' work over the 8 GPUs, a step after T_mix the learner's alone at its (smaller) pool."""
    out = plan_json(capsys, calibrated(tmp_path))
    shared = layout(out, "shared")
    found = re.fullmatch(
        r"mem_fraction_static learner ([\d.]+) \(computed\), explorer ([\d.]+) \(computed; of the memory "
        r"the learner engines leave, ([\d.]+) of the GPU's\)",
        shared["note"],
    )
    assert found, shared["note"]
    learner, explorer, base = map(float, found.groups())
    assert base == pytest.approx(1 - learner - 10 / 80, abs=5e-4)
    fractions = shared["fractions"]
    assert fractions == pytest.approx({"learner": learner, "explorer": explorer * (1 - learner - 10 / 80)})
    assert 0.748 < fractions["learner"] + fractions["explorer"] <= 0.75  # 80 GiB less 10 GiB per engine
    weights = {"learner": W_8B / 2, "explorer": load_arch("qwen3-1.7b").param_count() * 2}
    figures = {"learner": 500.0, "explorer": 1000.0}
    measured = 0.8 * 80 * GIB
    rates = {
        name: figures[name]
        * ((fractions[name] * 80 * GIB - weights[name]) / (fractions[name] * 80 * GIB))
        / ((measured - weights[name]) / measured)
        for name in figures
    }
    assert shared["rates"] == pytest.approx(rates)
    mix, post = shared["phases"]
    assert (mix["explorer_gpus"], mix["learner_gpus"]) == (8, 8)
    work = EXPLORER_TOKENS / rates["explorer"] + LEARNER_TOKENS / rates["learner"]
    assert mix["seconds"] == pytest.approx(work / 8)
    assert post["seconds"] == pytest.approx(AFTER_TOKENS / (8 * rates["learner"]))
    assert shared["total_seconds"] == pytest.approx(3 * work / 8 + 5 * AFTER_TOKENS / (8 * rates["learner"]))


def test_table_is_printed_as_a_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["plan", "--config", CONFIG_8B]) == 0
    out = capsys.readouterr().out
    assert "a MODEL" in out and "silybench" in out and "calibration: none" in out
    assert out.index("a MODEL") > out.index("KV tokens")  # after the memory table
    calibration = calibrated(tmp_path)
    assert main(["plan", "--config", CONFIG_8B, "--calibration", str(calibration)]) == 0
    out = capsys.readouterr().out
    assert f"calibration: {calibration} (measured on NVIDIA H100 80GB HBM3" in out


# --- the calibration file --------------------------------------------------------------------------


def record(
    method: str,
    step: int,
    g: tuple[int, int],
    samples: tuple[int, int],
    tokens: tuple[int, int],
    seconds: float,
    prompt_len: float,
) -> StepRecord:
    return StepRecord(
        method=method,
        step=step,
        g_explorer=g[0],
        g_learner=g[1],
        prompts=4,
        prompt_len=prompt_len,
        samples=dict(zip(("explorer", "learner"), samples, strict=True)),
        tokens=dict(zip(("explorer", "learner"), tokens, strict=True)),
        seconds=seconds,
        flops={"explorer": 0.0, "learner": 0.0},
    )


def test_calibration_round_trip(tmp_path: Path) -> None:
    """A measured report (records built here, no servers) -> calibration -> file -> read -> file:
    the learner's figure from the GRPO steps over GRPO's 8 GPUs (3 + 2/2 engines of TP 2), the
    explorer's from the explorer-only S2L-PO step over its 2 GPUs; a mixed step is left out."""
    gpu = EngineConfig(device="cuda", tp=2, mem_fraction_static=0.8)
    rollout = RolloutConfig(
        learner=EnginePoolConfig(num_engines=3, engine=gpu),
        explorer=EnginePoolConfig(num_engines=2, engine=EngineConfig(device="cuda", tp=1)),
    )
    engines = bench_engines(rollout, with_explorer=True)
    records = [
        record("s2l", 1, (8, 0), (20, 0), (3000, 0), 1.5, 150.0),
        record("s2l", 2, (4, 4), (10, 10), (1000, 1000), 9.0, 150.0),  # mixed: no per-pool time
        record("grpo", 1, (0, 8), (0, 40), (0, 8000), 2.0, 100.0),
        record("grpo", 2, (0, 8), (0, 40), (0, 12000), 3.0, 200.0),
    ]
    cfg = load_config(CONFIG_8B, ["model.learner=qwen3-8b", "model.explorer=qwen3-1.7b"])  # bundled names
    calibration = calibration_of(records, engines, cfg, "NVIDIA H100 80GB HBM3", 79.1)
    learner, explorer = calibration.models["qwen3-8b"], calibration.models["qwen3-1.7b"]
    assert learner.tokens_per_s == pytest.approx(20_000 / 5.0 / 8) and learner.tp == 2
    assert learner.context == pytest.approx(150 + (250 - 1) / 2)  # prompt 150, responses of 250
    assert learner.pool_gib == pytest.approx(0.8 * 79.1)
    assert explorer.tokens_per_s == pytest.approx(3000 / 1.5 / 2) and explorer.tp == 1
    assert explorer.context == pytest.approx(150 + (150 - 1) / 2)
    assert explorer.pool_gib == pytest.approx(79.1 - 10)  # SGLang's default fraction, 10 GiB kept
    path = write_calibration(tmp_path / "a.json", calibration)
    assert json.loads(path.read_text())["models"]["qwen3-8b"]["mem_fraction_static"] == pytest.approx(0.8)
    again = read_calibration(path)
    assert again.device == "NVIDIA H100 80GB HBM3" and again.gpu_mem_gib == 79.1
    for key, entry in calibration.models.items():
        for name in ("tokens_per_s", "tp", "pool_gib", "context", "source"):
            assert getattr(again.models[key], name) == pytest.approx(getattr(entry, name))
    assert read_calibration(write_calibration(tmp_path / "b.json", again)) == again  # twice in a row


@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda d: d["models"]["qwen3-8b"].__setitem__("tp", "2"), "models.qwen3-8b.tp"),
        (lambda d: d["models"]["qwen3-8b"].__setitem__("tp", True), "models.qwen3-8b.tp"),
        (
            lambda d: d["models"]["qwen3-8b"].__setitem__("mem_fraction_static", 1.5),
            "models.qwen3-8b.mem_fraction_static",
        ),
        (
            lambda d: d["models"]["qwen3-1.7b"].pop("tokens_per_s_per_gpu"),
            "models.qwen3-1.7b.tokens_per_s_per_gpu",
        ),
        (
            lambda d: d["models"]["qwen3-8b"].__setitem__("context_tokens", -1),
            "models.qwen3-8b.context_tokens",
        ),
        (lambda d: d.pop("device"), "device"),
        (lambda d: d.__setitem__("gpu_mem_gib", math.nan), "gpu_mem_gib"),
        (lambda d: d.__setitem__("models", {}), "models"),
        (lambda d: d.__setitem__("format", "s2l-rollout-calibration/0"), "format"),
    ],
)
def test_a_bad_calibration_names_the_file_and_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, field: str
) -> None:
    doc = json.loads(calibrated(tmp_path).read_text())
    edit(doc)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=re.escape(f"{bad}: {field}: expected")):
        read_calibration(bad)
    assert main(["plan", "--config", CONFIG_8B, "--calibration", str(bad)]) == 2  # a config error
    assert str(bad) in capsys.readouterr().err
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not a readable JSON calibration"):
        read_calibration(bad)


def test_layouts_that_cannot_run_and_runs_without_a_live_explorer(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # shared at the yaml's 0.8 + 0.8: no time for it (null), the reason instead; exit 3 as before
    argv = ["plan", "--config", CONFIG_8B, *SMALL, "rollout.explorer.placement=shared", "--json"]
    assert main(argv) == 3
    out = json.loads(capsys.readouterr().out)["rollout_time"]
    shared = layout(out, "shared")
    assert out["configured"] == "shared" and out["engine_gpus"] == 6  # the learner engines' GPUs
    assert shared["total_seconds"] is None and "mem_fraction_static" in shared["note"]
    # GRPO (t_mix 0): one phase, GRPO only; an explorer cache: the learner's G_s only, no explorer GPUs
    assert main(["plan", "--config", CONFIG_8B, *SMALL, "schedule.t_mix=0", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["rollout_time"]
    assert [t["layout"] for t in out["layouts"]] == ["grpo"] and [p["name"] for p in out["phases"]] == [
        "every step"
    ]
    cache = tmp_path / "cache.jsonl"
    cache.write_text("")
    argv = ["plan", "--config", CONFIG_8B, *SMALL, f"rollout.explorer_cache_path={cache}", "--json"]
    assert main([*argv, "--calibration", str(calibrated(tmp_path)), "--mean-response-tokens", "100"]) == 0
    out = json.loads(capsys.readouterr().out)["rollout_time"]
    cached = layout(out, "dedicated")
    assert out["engine_gpus"] == 6 and out["phases"][0]["explorer_tokens"] == 0
    assert cached["phases"][0]["learner_gpus"] == 6
    assert cached["phases"][0]["seconds"] == pytest.approx(LEARNER_TOKENS / (6 * 500))
