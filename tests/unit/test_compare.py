"""`s2l compare`: methods over seeds from run directories written as the trainer writes them, checked
against hand-computed means, t intervals, trapezoids and cumulative axes; and `s2l demo`'s plan of
runs per method and seed (configs only, nothing trains)."""

import argparse
import io
import math
from pathlib import Path

import pytest

import yaml
from megatron_s2l.archs import load_arch
from megatron_s2l.cli import main
from megatron_s2l.config import load_config
from megatron_s2l.configio import to_dict
from megatron_s2l.demo.assets import DemoAssets
from megatron_s2l.run.compare import (
    area_under_curve,
    group_by_method,
    load_run,
    mean_ci,
    plot_comparison,
    summary_table,
    t_quantile_975,
)
from megatron_s2l.run.metrics import RunLogger
from megatron_s2l.run.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
T_975_DF2 = 4.302653  # Student's t, 0.975 quantile, 2 degrees of freedom
EVAL_STEPS = [0, 1, 4]  # uneven on purpose: the area is a trapezoid, not the mean of the points
# Held-out avg@k at EVAL_STEPS, per seed.
S2L = [[0.2, 0.4, 0.5], [0.3, 0.5, 0.7], [0.1, 0.3, 0.6]]
GRPO = [[0.2, 0.3, 0.4], [0.2, 0.2, 0.2], [0.3, 0.3, 0.6]]


def write_run(
    runs: Path, config: str, name: str, seed: int, accuracy: list[float], eval_steps: list[int] = EVAL_STEPS
) -> Path:
    """A run directory as `s2l train` leaves it: config.yaml (prepare_run_dir) and metrics.jsonl
    (RunLogger). Step k generates 100 k explorer tokens in 10 samples and 10 k learner tokens in 2
    samples, and takes 2 + k / 2 + seed seconds."""
    cfg = load_config(
        ROOT / config,
        [f"name={name}", f"seed={seed}", "model.learner=qwen3-8b", "model.explorer=qwen3-1.7b"],
    )
    run = RunDir(runs / name)
    logger = RunLogger(run, tensorboard=False, total_steps=4, out=io.StringIO())
    run.config_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    evals = dict(zip(eval_steps, accuracy, strict=True))
    for step in range(5):
        metrics = {"eval/avg_at_k": evals[step], "eval/avg_at_k_se": 0.05} if step in evals else {}
        if step:
            metrics |= {
                "rollout/generated_tokens_explorer": 100.0 * step,
                "rollout/explorer_samples": 10.0,
                "rollout/generated_tokens_learner": 10.0 * step,
                "rollout/learner_samples": 2.0,
                "time/step": 2.0 + step / 2 + seed,
            }
        logger.log(step, metrics)
    logger.close()
    return run.root


@pytest.fixture
def run_dirs(tmp_path: Path) -> list[Path]:
    """2 methods x 3 seeds, named as `s2l demo --seeds 3` names them, interleaved."""
    dirs = []
    for seed in range(3):
        dirs.append(write_run(tmp_path, "yaml/demo-cpu.yaml", f"demo-cpu-seed{seed}", seed, S2L[seed]))
        dirs.append(
            write_run(tmp_path, "yaml/demo-cpu-grpo.yaml", f"demo-cpu-grpo-seed{seed}", seed, GRPO[seed])
        )
    return dirs


def hand_ci(values: list[float]) -> float:
    mean = sum(values) / 3
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / 2)
    return T_975_DF2 * sd / math.sqrt(3)


def test_runs_group_by_name_without_the_seed_suffix(run_dirs: list[Path]) -> None:
    groups = group_by_method([load_run(d) for d in run_dirs])
    assert list(groups) == ["demo-cpu", "demo-cpu-grpo"]
    assert [r.root.name for r in groups["demo-cpu-grpo"]] == [f"demo-cpu-grpo-seed{k}" for k in range(3)]
    assert [r.cfg.seed for r in groups["demo-cpu"]] == [0, 1, 2]


def test_mean_and_t_interval_by_hand() -> None:
    mean, half = mean_ci([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6)
    assert half == pytest.approx(T_975_DF2 * 0.1 / math.sqrt(3), abs=1e-9)  # sd of 0.5, 0.7, 0.6 is 0.1
    assert mean_ci([0.42]) == (0.42, None)


def test_t_quantiles_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for df in range(1, 31):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-6)
    for df in range(31, 200):  # beyond the table: the expansion
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)


def test_area_is_a_trapezoid_over_the_step_span() -> None:
    # (1 - 0) * (0.2 + 0.4) / 2 + (4 - 1) * (0.4 + 0.5) / 2 = 0.3 + 1.35, over 4 steps
    assert area_under_curve(EVAL_STEPS, S2L[0]) == pytest.approx(1.65 / 4)
    assert area_under_curve([0, 10], [0.5, 0.5]) == pytest.approx(0.5)


def test_summary_table_by_hand(run_dirs: list[Path]) -> None:
    groups = group_by_method([load_run(d) for d in run_dirs])
    rows = {line.split(" | ")[0].strip("| "): line.strip("| ").split(" | ") for line in summary_table(groups)}
    for method, accuracy in (("demo-cpu", S2L), ("demo-cpu-grpo", GRPO)):
        finals = [a[-1] for a in accuracy]
        areas = [(1 * (a[0] + a[1]) / 2 + 3 * (a[1] + a[2]) / 2) / 4 for a in accuracy]
        _, seeds, span, final, auc = rows[method]
        assert (seeds, span) == ("3", "0-4")
        assert final == f"{sum(finals) / 3:.3f} +- {hand_ci(finals):.3f}"
        assert auc == f"{sum(areas) / 3:.3f} +- {hand_ci(areas):.3f}"
    assert rows["demo-cpu"][3] == "0.600 +- 0.248"  # 4.302653 * 0.1 / sqrt(3)


def test_one_seed_prints_the_mean_and_no_interval(tmp_path: Path) -> None:
    run = write_run(tmp_path, "yaml/demo-cpu.yaml", "demo-cpu", 1, S2L[1])
    (row,) = summary_table(group_by_method([load_run(run)]))[2:]
    assert row == "| demo-cpu | 1 | 0-4 | 0.700 +- n/a | 0.550 +- n/a |"  # (0.4 + 3 * 0.6) / 4


def test_mismatched_eval_steps_name_the_runs(tmp_path: Path) -> None:
    a = write_run(tmp_path, "yaml/demo-cpu.yaml", "demo-cpu-seed0", 0, S2L[0])
    b = write_run(tmp_path, "yaml/demo-cpu.yaml", "demo-cpu-seed1", 1, S2L[1], eval_steps=[0, 2, 4])
    with pytest.raises(ValueError, match="demo-cpu: its runs evaluate at different steps") as e:
        group_by_method([load_run(a), load_run(b)])
    assert f"{a} at [0, 1, 4]" in str(e.value) and f"{b} at [0, 2, 4]" in str(e.value)


def test_cumulative_x_axes(run_dirs: list[Path]) -> None:
    run = load_run(run_dirs[2])  # demo-cpu-seed1
    assert run.x_at_evals("step") == [0, 1, 4]
    # tokens per step k: 100 k + 10 k; through step 4: 110 * (1 + 2 + 3 + 4)
    assert run.x_at_evals("tokens") == [0, 110, 1100]
    # seconds per step k: 2 + k / 2 + 1 (seed 1)
    assert run.x_at_evals("wall") == pytest.approx([0, 3.5, 3.5 + 4 + 4.5 + 5])

    def flops(arch_name: str, tokens: float, mean_len: float) -> float:
        arch = load_arch(arch_name)  # attention over (mean_len - 1) / 2 keys on average, no prompt
        attention = 4 * arch.num_hidden_layers * arch.num_attention_heads * arch.head_dim
        return tokens * (2 * arch.matmul_params() + attention * (mean_len - 1) / 2)

    per_step = [flops("qwen3-1.7b", 100 * k, 10 * k) + flops("qwen3-8b", 10 * k, 5 * k) for k in range(1, 5)]
    assert run.x_at_evals("flops") == pytest.approx([0, per_step[0], sum(per_step)])


def test_plot_and_cli_write_pngs(run_dirs: list[Path], tmp_path: Path, capsys) -> None:
    groups = group_by_method([load_run(d) for d in run_dirs])
    path = plot_comparison(groups, "wall", tmp_path / "plots")
    assert path == tmp_path / "plots" / "compare_wall.png"
    assert path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000
    assert main(["compare", *map(str, run_dirs), "--x", "tokens", "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| demo-cpu-grpo | 3 | 0-4 |" in out
    assert (tmp_path / "cli" / "compare_tokens.png").read_bytes()[:8] == PNG_MAGIC


def test_compare_refuses_a_folder_that_is_no_run(tmp_path: Path, capsys) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "no config.yaml (is it a run directory?)" in capsys.readouterr().err


def demo_args(argv: list[str]) -> argparse.Namespace:
    from megatron_s2l.demo.cli import add_arguments

    parser = argparse.ArgumentParser(prog="s2l demo")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_demo_plans_one_run_per_method_and_seed(tmp_path: Path, monkeypatch) -> None:
    from megatron_s2l.demo.cli import run_configs

    monkeypatch.chdir(ROOT)  # the demo's configs are named relative to the repository
    assets = DemoAssets(tmp_path / "train.jsonl", tmp_path / "eval.jsonl", tmp_path / "e", tmp_path / "l")
    default = demo_args([])
    configs = run_configs(default.methods, default.seeds, assets, default.overrides)
    assert [(c.name, c.seed) for c in configs] == [("demo-cpu", 0), ("demo-cpu-grpo", 0)]

    args = demo_args(["--seeds", "2", "--methods", "s2l-released,hightemp,s2l", "schedule.t_mix=4", "seed=7"])
    configs = run_configs(args.methods, args.seeds, assets, args.overrides)
    assert [(c.name, c.seed) for c in configs] == [
        ("demo-cpu-released-seed0", 0),
        ("demo-cpu-released-seed1", 1),
        ("demo-cpu-hightemp-seed0", 0),
        ("demo-cpu-hightemp-seed1", 1),
        ("demo-cpu-seed0", 0),
        ("demo-cpu-seed1", 1),
    ]
    released, _, hightemp, _, s2l, _ = configs
    assert (released.schedule.mode, released.schedule.rounding) == ("alternating", "ceil-both")
    assert released.schedule.t_mix == s2l.schedule.t_mix == 4
    assert released.model.explorer == s2l.model.explorer == str(tmp_path / "e")
    # the baseline stays without explorer whatever the overrides say
    assert (hightemp.schedule.t_mix, hightemp.model.explorer) == (0, "")
    assert hightemp.rollout.learner_sampling.temperature == 1.3
    assert {c.model.learner for c in configs} == {str(tmp_path / "l")}
    assert {RunDir.for_config(c).root for c in configs} == {Path("runs") / c.name for c in configs}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "s2l,nope"], "unknown method(s) nope; choose from s2l, s2l-released, grpo, hightemp"),
        (["--methods", ","], "unknown method(s) (none given)"),
        (["--seeds", "0"], "expected a whole number >= 1, got '0'"),
    ],
)
def test_demo_refuses_bad_arguments_before_anything_runs(argv: list[str], message: str, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        demo_args(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
