"""`s2l bench rollout`: model mode against hand-computed FLOPs, from-runs mode on hand-written runs,
measured mode's records, totals, table and files on hand-made rollout batches (its engine run:
tests/integration/test_bench_rollout_measured.py)."""

import csv
import json
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest

from megatron_s2l.archs import ModelArch, load_arch
from megatron_s2l.bench.rollout_measured import (
    CSV_FIELDS,
    bench_engines,
    format_table,
    method_engines,
    method_totals,
    plot_steps,
    step_record,
    write_csv,
)
from megatron_s2l.bench.rollout_model import Lengths, compare_rollout_flops
from megatron_s2l.bench.rollout_runs import measure_run
from megatron_s2l.cli import main
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.records import RolloutBatch, RolloutGroup, RolloutRecord

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]

# Small enough to count by hand (rollout_flops.py): FLOPs per token = 2 x matmul weights + per-key x keys.
# learner: q,o 4x4 each, k,v 4x2 each (48), MLP 3x4x8 (96), LM head 10x4 (40) = 184; per key 4x1x2x2 = 16
LEARNER = dict(
    vocab_size=10,
    hidden_size=4,
    intermediate_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=2,
    tie_word_embeddings=False,
)
# explorer: q,k,v,o 2x2 each (16), MLP 3x2x4 (24), LM head (tied) 10x2 (20) = 60; per key 4x1x1x2 = 8
EXPLORER = dict(
    vocab_size=10,
    hidden_size=2,
    intermediate_size=4,
    num_hidden_layers=1,
    num_attention_heads=1,
    num_key_value_heads=1,
    head_dim=2,
    tie_word_embeddings=True,
)


def hf_config(fields: dict) -> dict:
    return {"model_type": "qwen3", "max_position_embeddings": 64, **fields}


def arch(fields: dict, name: str) -> ModelArch:
    return ModelArch.from_hf_config(hf_config(fields), name)


def lengths(n: int, prompt: int = 0) -> Lengths:
    return Lengths(prompt=prompt, learner=n, explorer=n, hightemp=n)


def test_hand_computed_schedule() -> None:
    """steps 2, T_mix 2, G 4, one prompt, P 2, L 3: mean keys 2 + (3-1)/2 = 3, so a learner token
    costs 2 x 184 + 16 x 3 = 416 and an explorer token 2 x 60 + 8 x 3 = 144.
    Step 1: all 4 samples from the explorer (4 x 3 x 144); step 2: all from the learner (12 x 416)."""
    result = compare_rollout_flops(
        arch(LEARNER, "l"),
        arch(EXPLORER, "e"),
        steps=2,
        t_mix=2,
        group_size=4,
        prompts_per_step=1,
        lengths=lengths(3, prompt=2),
    )
    assert [(r.g_explorer, r.g_learner) for r in result.rows] == [(4, 0), (0, 4)]
    assert [r.flops["s2l"] for r in result.rows] == [1728, 4992]
    assert [r.flops["grpo"] for r in result.rows] == [4992, 4992]
    assert Fraction(result.saved_vs("grpo")).limit_denominator(10**6) == 1 - Fraction(6720, 9984)
    # prefill of positions 0..P-2 = position 0 (1 key, no LM head): learner 2 x 144 + 16, explorer 2 x 40 + 8
    assert result.prefill == {"s2l": 88 + 304, "grpo": 2 * 304, "hightemp": 2 * 304}


@pytest.mark.parametrize(("learner", "explorer", "t_mix"), [("qwen3-8b", "qwen3-1.7b", 0), ("8b", "8b", 8)])
def test_no_saving_without_a_smaller_explorer(learner: str, explorer: str, t_mix: int) -> None:
    result = compare_rollout_flops(
        load_arch(learner),
        load_arch(explorer),
        steps=16,
        t_mix=t_mix,
        group_size=16,
        prompts_per_step=8,
        lengths=lengths(1000, prompt=200),
    )
    assert result.saved_vs("grpo") == pytest.approx(0, abs=1e-12)
    assert result.saved_vs("hightemp") == pytest.approx(0, abs=1e-12)


def test_hightemp_length_changes_only_that_baseline() -> None:
    kwargs = dict(steps=4, t_mix=2, group_size=8, prompts_per_step=2)
    learner, explorer = load_arch("8b"), load_arch("1.7b")
    equal = compare_rollout_flops(learner, explorer, lengths=lengths(1000), **kwargs)
    longer = compare_rollout_flops(
        learner, explorer, lengths=Lengths(prompt=0, learner=1000, explorer=1000, hightemp=1500), **kwargs
    )
    assert equal.saved_vs("hightemp") == equal.saved_vs("grpo") == longer.saved_vs("grpo")
    assert longer.saved_vs("hightemp") > longer.saved_vs("grpo")


def test_paper_schedule_json(capsys: pytest.CaptureFixture) -> None:
    """8B learner, 1.7B explorer, G 16, 16 steps, T_mix 8: the saving lies between 0 and the explorer's
    share of samples (67 of 256: the explorer is cheaper per token, not free)."""
    argv = ["bench", "rollout", "--learner", "qwen3-8b", "--explorer", "qwen3-1.7b"]
    assert main([*argv, "--group-size", "16", "--steps", "16", "--t-mix", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["explorer_sample_share"] == 67 / 256
    assert 0 < out["rollout_flops_saved_vs_grpo"] < 67 / 256
    assert out["rollout_flops_saved_vs_hightemp"] == out["rollout_flops_saved_vs_grpo"]
    assumptions = out["assumptions"]
    assert (assumptions["prompts_per_step"], assumptions["prompt_len"], assumptions["learner_len"]) == (
        1024,
        512,
        4096,
    )
    assert assumptions["flops_per_token"]["explorer"] < assumptions["flops_per_token"]["learner"]
    assert [r["g_explorer"] for r in out["steps"][:8]] == [16, 14, 12, 10, 7, 5, 3, 0]
    assert set(out["steps"][0]) == {
        "step",
        "alpha",
        "g_explorer",
        "g_learner",
        "s2l_flops",
        "grpo_flops",
        "hightemp_flops",
    }


def test_model_mode_table_without_heavy_imports() -> None:
    """As a user runs it; neither Megatron, SGLang nor transformers is imported (nor by importing the
    measured mode's module)."""
    code = (
        "import sys; from megatron_s2l.cli import main; import megatron_s2l.bench.rollout_measured; "
        "rc = main(['bench', 'rollout', '--learner', '8b', '--explorer', '1.7b', '--group-size', '16', "
        "'--steps', '16', '--t-mix', '8']); "
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('megatron', 'sglang', 'transformers')]; "
        "print('heavy:', heavy); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[-1] == "heavy: []"
    assert "| step | alpha | G_w | G_s | S2L-PO (EFLOP) | GRPO (EFLOP) | high-temp GRPO (EFLOP) |" in lines
    assert lines[-2].startswith("S2L-PO rollout compute: ") and "less than GRPO" in lines[-2]


def test_bad_arguments(capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "rollout", "--learner", "8b", "--explorer", "1.7b"]) == 2
    assert "needs --group-size, --steps, --t-mix" in capsys.readouterr().err
    assert main(["bench", "rollout", "--runs", "x", "--steps", "3"]) == 2
    assert "--steps: model-mode options" in capsys.readouterr().err


# --- from-runs mode -------------------------------------------------------------------------------


def write_model(path: Path, fields: dict) -> str:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(hf_config(fields)))
    return str(path)


def write_run(run: Path, model: str, schedule: str, rows: list[dict]) -> Path:
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {run.name}\nmodel: {model}\nschedule: {schedule}\n")
    records = [{"step": 0, "eval/avg_at_k": 0.1}, *rows]  # step 0: evaluation only
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.fixture
def runs(tmp_path: Path) -> tuple[Path, Path]:
    """An S2L-PO run that logged generated tokens (10 explorer samples generated in step 1, dynamic
    sampling kept 4) and a GRPO run from before they were logged (batch tokens only)."""
    learner = write_model(tmp_path / "models/learner", LEARNER)
    explorer = write_model(tmp_path / "models/explorer", EXPLORER)
    s2l = write_run(
        tmp_path / "runs/s2l",
        f"{{learner: {learner}, explorer: {explorer}}}",
        "{steps: 2, t_mix: 2, group_size: 4, prompts_per_step: 1}",
        [
            {
                "step": 1,
                "rollout/generated_tokens_explorer": 30.0,
                "rollout/explorer_samples": 10.0,
                "rollout/generated_tokens_learner": 0.0,
                "rollout/learner_samples": 0.0,
                "rollout/tokens_explorer": 12.0,
                "response_len/explorer": 3.0,
                "time/rollout": 2.0,
            },
            {
                "step": 2,
                "rollout/generated_tokens_explorer": 0.0,
                "rollout/explorer_samples": 0.0,
                "rollout/generated_tokens_learner": 20.0,
                "rollout/learner_samples": 4.0,
                "rollout/tokens_learner": 20.0,
                "response_len/learner": 5.0,
                "time/rollout": 3.0,
            },
        ],
    )
    kept = {"rollout/tokens_learner": 16.0, "response_len/learner": 4.0, "rollout/learner_samples": 4.0}
    grpo = write_run(
        tmp_path / "runs/grpo",
        f"{{learner: {learner}}}",
        "{steps: 2, t_mix: 0, group_size: 4, prompts_per_step: 1}",
        [{"step": 1, **kept, "time/rollout": 4.0}, {"step": 2, **kept, "time/rollout": 6.0}],
    )
    return s2l, grpo


def test_measure_run_by_hand(runs: tuple[Path, Path]) -> None:
    """Prompt length unknown (0): mean keys (L-1)/2. S2L-PO: 30 explorer tokens at mean length 3
    (30 / 10 samples, not the kept 3) cost 30 x (120 + 8 x 1); 20 learner tokens 20 x (368 + 16 x 2).
    GRPO: 32 kept learner tokens at length 4 cost 32 x (368 + 16 x 1.5)."""
    s2l, grpo = (measure_run(r) for r in runs)
    assert (s2l.counted, s2l.steps, s2l.tokens) == ("generated", 2, {"explorer": 30.0, "learner": 20.0})
    assert s2l.flops == {"explorer": 30 * 128, "learner": 20 * 400}
    assert s2l.rollout_seconds == 5.0 and s2l.explorer.endswith("models/explorer")
    assert (grpo.counted, grpo.explorer, grpo.flops) == ("kept", None, {"explorer": 0.0, "learner": 32 * 392})
    with_prompts = measure_run(runs[0], prompt_len=2)
    assert with_prompts.flops == {"explorer": 30 * (120 + 8 * 3), "learner": 20 * (368 + 16 * 4)}


def test_runs_cli_relative_to_first(runs: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    assert main(["bench", "rollout", "--runs", *map(str, runs), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    first, second = out["runs"]
    assert (out["mode"], out["prompt_len"], first["flops_vs_first"]) == ("runs", 0, 1.0)
    assert second["flops_vs_first"] == 32 * 392 / (30 * 128 + 20 * 400)
    assert second["seconds_vs_first"] == 2.0 and first["tokens_explorer"] == 30.0
    assert main(["bench", "rollout", "--runs", *map(str, runs)]) == 0
    table = capsys.readouterr().out
    saved = 1 - (30 * 128 + 20 * 400) / (32 * 392)
    assert (
        f"{runs[0]} spent {saved:.1%} less rollout compute than {runs[1]}, 50.0% less rollout time" in table
    )
    assert "prompt length unknown (taken as 0)" in table


def test_absent_checkpoint_needs_a_bundled_arch(tmp_path: Path) -> None:
    rows = [{"step": 1, "rollout/tokens_learner": 8.0, "response_len/learner": 2.0, "time/rollout": 1.0}]
    run = write_run(tmp_path / "run", "{learner: /absent/Qwen3-8B-Base}", "{steps: 1, group_size: 4}", rows)
    with pytest.raises(
        ValueError, match=r"model.learner '/absent/Qwen3-8B-Base' has no config.json.*--learner"
    ):
        measure_run(run)
    measured = measure_run(run, learner="qwen3-8b")
    assert measured.learner == "qwen3-8b"
    assert measured.flops["learner"] == 8 * (2 * load_arch("8b").matmul_params() + 4 * 36 * 32 * 128 * 0.5)


# --- measured mode --------------------------------------------------------------------------------

PROMPTS = {"p0": [1], "p1": [1, 2, 3]}  # mean prompt length 2, as in test_hand_computed_schedule


def rollout_batch(step: int, lengths: dict[str, dict[str, list[int]]]) -> RolloutBatch:
    """A batch with, per source and prompt, responses of the given lengths."""
    groups = []
    for prompt, ids in PROMPTS.items():
        records = [
            RolloutRecord(prompt, i, source, ids, [7] * n, [-1.0] * n, "stop", "default")
            for source in ("explorer", "learner")
            for i, n in enumerate(lengths.get(source, {}).get(prompt, []))
        ]
        groups.append(RolloutGroup(prompt, records))
    g = {s: len(lengths.get(s, {}).get("p0", [])) for s in ("explorer", "learner")}
    return RolloutBatch(step=step, g_explorer=g["explorer"], g_learner=g["learner"], groups=groups)


# Responses of mean length 3 after prompts of mean length 2 (mean keys 3): an explorer token costs
# 144 FLOPs and a learner token 416 (test_hand_computed_schedule); high-temperature responses of 5
# tokens have mean keys 4, so 368 + 16 x 4 = 432 per token.
EXPLORER_3 = {"explorer": {"p0": [2, 4], "p1": [3, 3]}}
LEARNER_3 = {"learner": {"p0": [3, 3], "p1": [3, 3]}}
LEARNER_5 = {"learner": {"p0": [5, 5], "p1": [5, 5]}}
ARCHS = {"learner": arch(LEARNER, "l"), "explorer": arch(EXPLORER, "e")}


@pytest.fixture
def measured_records() -> list:
    """Two steps of each method: S2L-PO all explorer then all learner (T_mix 2, G 2)."""
    steps = {
        "s2l": [(EXPLORER_3, 1.0), (LEARNER_3, 2.0)],
        "grpo": [(LEARNER_3, 2.0), (LEARNER_3, 2.0)],
        "hightemp": [(LEARNER_5, 3.0), (LEARNER_5, 3.0)],
    }
    return [
        step_record(method, rollout_batch(step, lengths), seconds, ARCHS)
        for method, rows in steps.items()
        for step, (lengths, seconds) in enumerate(rows, start=1)
    ]


def test_step_record_by_hand(measured_records: list) -> None:
    explorer_step, learner_step = measured_records[:2]
    assert (explorer_step.prompts, explorer_step.prompt_len) == (2, 2.0)
    assert (explorer_step.g_explorer, explorer_step.g_learner) == (2, 0)
    assert explorer_step.samples == {"explorer": 4, "learner": 0}
    assert explorer_step.tokens == {"explorer": 12, "learner": 0}
    assert explorer_step.flops == {"explorer": 12 * 144, "learner": 0.0}
    assert learner_step.flops == {"explorer": 0.0, "learner": 12 * 416}
    row = explorer_step.to_row()
    assert tuple(row) == CSV_FIELDS
    assert (row["mean_len_explorer"], row["mean_len_learner"], row["flops"]) == (3.0, 0.0, 1728)
    assert (row["tokens_per_s"], row["seconds_per_token"]) == (12.0, 1 / 12)


def test_totals_ratios_and_table(measured_records: list) -> None:
    totals = method_totals(measured_records)
    assert list(totals) == ["s2l", "grpo", "hightemp"]
    s2l, grpo, hot = totals.values()
    assert (s2l.steps, s2l.tokens, s2l.seconds) == (2, {"explorer": 12, "learner": 12}, 3.0)
    assert (s2l.total_flops, grpo.total_flops, hot.total_flops) == (1728 + 4992, 2 * 4992, 2 * 20 * 432)
    as_dict = s2l.to_dict(grpo)
    assert as_dict["flops_vs_grpo"] == 6720 / 9984 and as_dict["seconds_vs_grpo"] == 0.75
    assert (as_dict["mean_len_explorer"], as_dict["tokens_per_s"], as_dict["samples_learner"]) == (
        3.0,
        8.0,
        4,
    )
    assert hot.to_dict(grpo)["seconds_vs_grpo"] == 1.5
    lines = format_table(totals).splitlines()
    assert (
        lines[0].startswith("| method | tokens explorer | tokens learner |") and "rollout FLOP |" in lines[0]
    )
    assert lines[2] == "| S2L-PO | 12 | 12 | 3.0 | 3.0 | 3.00 | 8 | 125.000 | 6,720.000 | 0.673 | 0.750 |"
    assert lines[3] == "| GRPO | 0 | 24 | - | 3.0 | 4.00 | 6 | 166.667 | 9,984.000 | 1.000 | 1.000 |"
    assert lines[4].startswith("| high-temp GRPO | 0 | 40 | - | 5.0 | 6.00 |")
    assert lines[-1] == (
        "S2L-PO: 32.7% less rollout FLOPs and 25.0% less rollout time than GRPO; "
        "61.1% less rollout FLOPs and 50.0% less rollout time than high-temp GRPO"
    )


def test_csv_and_png(measured_records: list, tmp_path: Path) -> None:
    path = write_csv(measured_records, tmp_path / "out/rollout.csv")
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], int(r["step"])) for r in rows] == [
        (m, s) for m in ("s2l", "grpo", "hightemp") for s in (1, 2)
    ]
    assert float(rows[0]["flops_explorer"]) == 1728 and float(rows[1]["seconds_per_token"]) == 2 / 12
    png = plot_steps(measured_records, tmp_path / "out/rollout.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--measured"], "--measured needs --config YAML"),
        (["--measured", "--config", "c.yaml", "--t-mix", "3"], "--t-mix: not options of --measured"),
        (["--measured", "--config", "c.yaml", "--runs", "r"], "--runs: not options of --measured"),
        (["--runs", "r", "--hightemp", "1.3"], "--hightemp: options of --measured only"),
        (["--config", "c.yaml", "a.b=1"], "--config, key=value overrides: options of --measured only"),
        (
            ["--measured", "--config", str(ROOT / "yaml/demo-cpu.yaml"), "--steps", "21"],
            "--steps must be in [1, schedule.steps = 20], got 21",
        ),
    ],
)
def test_measured_arguments(argv: list[str], error: str, capsys: pytest.CaptureFixture) -> None:
    """Misused options fail before any engine starts."""
    assert main(["bench", "rollout", *argv]) == 2
    assert error in capsys.readouterr().err


# --- measured mode: equal hardware ------------------------------------------------------------------


def gpu_rollout(learner: tuple[int, int], explorer: tuple[int, int], **pool_extra) -> RolloutConfig:
    """Rollout config with (num_engines, tp) per pool, on CUDA."""

    def pool(engines_tp: tuple[int, int]) -> EnginePoolConfig:
        n, tp = engines_tp
        return EnginePoolConfig(num_engines=n, engine=EngineConfig(device="cuda", tp=tp), **pool_extra)

    return RolloutConfig(learner=pool(learner), explorer=pool(explorer))


@pytest.mark.parametrize(
    ("learner", "explorer", "grpo_engines"),
    [
        ((3, 2), (2, 1), 4),  # yaml/qwen3-8b-s2l.yaml's pools: 6 + 2 = 8 GPUs; GRPO 4 x TP 2 = 8
        ((5, 4), (4, 1), 6),  # yaml/qwen3-14b-s2l.yaml's: 20 + 4 = 24; GRPO 6 x TP 4 = 24
        ((3, 1), (1, 1), 4),  # yaml/smoke-1node.yaml's: 3 + 1 = 4
    ],
)
def test_grpo_gets_the_explorer_gpus_too(learner: tuple, explorer: tuple, grpo_engines: int) -> None:
    engines = bench_engines(gpu_rollout(learner, explorer), with_explorer=True)
    s2l_gpus = learner[0] * learner[1] + explorer[0] * explorer[1]
    assert engines.grpo.learner.num_engines == grpo_engines
    assert engines.grpo.learner.num_engines * engines.grpo.learner.engine.tp == s2l_gpus
    assert engines.s2l.learner.num_engines == learner[0] and engines.equal
    assert engines.describe(with_explorer=True) == (
        f"S2L-PO: learner {learner[0]} x TP {learner[1]} + explorer {explorer[0]} x TP {explorer[1]} = "
        f"{s2l_gpus} GPUs; GRPO and high-temp GRPO: learner {grpo_engines} x TP {learner[1]} = "
        f"{s2l_gpus} GPUs"
    )


def test_equal_hardware_refusals_and_pass_throughs() -> None:
    with pytest.raises(ValueError, match=r"explorer's 1 devices .* multiple of rollout.learner.engine.tp"):
        bench_engines(gpu_rollout((3, 2), (1, 1)), with_explorer=True)
    rollout = gpu_rollout((3, 2), (1, 1))
    assert bench_engines(rollout, with_explorer=False).grpo is rollout  # GRPO-only config: nothing to add
    attached = gpu_rollout((1, 2), (1, 1), external_urls=["http://node1:30000"])
    engines = bench_engines(attached, with_explorer=True)
    assert engines.grpo is attached and not engines.equal
    assert "hardware not equalised" in engines.describe(with_explorer=True)


def test_measured_engines_use_every_gpu_without_world_size(monkeypatch, tmp_path: Path) -> None:
    """The bench runs no learner rank: with WORLD_SIZE unset, an 8-GPU node's engines needing 8 GPUs
    fit (a training process would keep GPU 0 for its one learner rank), and GRPO's take the same 8."""
    from megatron_s2l.config import load_config

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", ",".join(str(i) for i in range(8)))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setenv("S2L_ENGINE_API_KEY", "k")  # the config's engines listen on 0.0.0.0
    cfg = load_config(
        ROOT / "yaml/qwen3-8b-s2l.yaml",
        ["rollout.learner.engine.device=cuda", "rollout.explorer.engine.device=cuda"],
    )
    engines_of = bench_engines(cfg.rollout, with_explorer=True)
    gpus_of = lambda pool: [server.process.env["CUDA_VISIBLE_DEVICES"] for server in pool.servers]
    s2l = method_engines(cfg, engines_of, "s2l", tmp_path)
    assert gpus_of(s2l.learner) == ["0,1", "2,3", "4,5"] and gpus_of(s2l.explorer) == ["6", "7"]
    grpo = method_engines(cfg, engines_of, "grpo", tmp_path)
    assert grpo.explorer is None and gpus_of(grpo.learner) == ["0,1", "2,3", "4,5", "6,7"]
    # A training process keeps GPU 0 for its learner rank when torchrun's count is absent.
    from dataclasses import replace

    from megatron_s2l.rollout.engines import RolloutEngines

    rollout = replace(cfg.rollout, log_dir=str(tmp_path))
    with pytest.raises(ValueError, match="need 8 GPUs, 7 are free"):
        RolloutEngines(rollout, explorer_model=cfg.model.explorer, learner_model=cfg.model.learner)


def test_measured_table_names_the_engines(measured_records: list) -> None:
    lines = format_table(method_totals(measured_records), "S2L-PO: ...; GRPO ...").splitlines()
    assert lines[:3] == ["engines: S2L-PO: ...; GRPO ...", "", lines[2]] and lines[2].startswith("| method |")
