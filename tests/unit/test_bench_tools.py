"""`tools/bench_kernels.py` and `tools/bench_learner_step.py` without a GPU: the default grid (the
learner's widths, its time estimate under the 4-minute budget of tools/gpu_check.sh), the
per-element correctness gate (it must catch an error a max-over-the-tensor check misses), the
table, and --num-layers.

    .venv/bin/pytest tests/unit/test_bench_tools.py -q

NUM_GPUS = 0.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

NUM_GPUS = 0
TOOLS = Path(__file__).resolve().parents[2] / "tools"


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", TOOLS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return load_tool("bench_kernels")


@pytest.mark.parametrize("with_liger", [False, True])
def test_default_grid_is_the_learners_path_and_fits_four_minutes(bench, with_liger: bool) -> None:
    args = bench.parse_args([])
    cases = bench.build_grid(args, with_liger)
    assert args.dtype == "bf16" and not args.no_entropy
    assert {c.width for c in cases} == {151936, 76032, 38016, 19072}
    impls = {c.impl for c in cases}
    assert {"ours", "ours-inplace", "torch", "fused-linear", "linear+ours"} <= impls
    assert ("liger-ce" in impls) == with_liger and ("liger-flce" in impls) == with_liger
    assert sum(c.impl == "torch.compile" for c in cases) <= 2  # cold builds dominate the estimate
    assert not any(c.impl == "ours-inplace" and c.mode == "fwd" for c in cases)
    assert bench.estimate_seconds(cases, args) < 240
    # The estimate grows with the work: a wider grid or more iterations cost more.
    longer = bench.parse_args(["--iters", "200"])
    assert bench.estimate_seconds(bench.build_grid(longer, with_liger), longer) > bench.estimate_seconds(
        cases, args
    )


def test_no_entropy_and_fp32_change_the_grid_and_the_traffic(bench) -> None:
    fp32 = bench.parse_args(["--dtype", "fp32", "--no-entropy"])
    assert not any(c.impl in bench.LINEAR_IMPLS for c in bench.build_grid(fp32, False))
    case = bench.Case(16384, 151936, "ours", "fwd+bwd")
    bf16 = bench.parse_args([])
    assert bench.floor_work(case, fp32)[0] == 2 * bench.floor_work(case, bf16)[0]
    torch_case = bench.Case(16384, 151936, "torch", "fwd")
    assert (
        bench.modelled_work(torch_case, fp32)[0]
        < bench.modelled_work(torch_case, bf16)[0] + 2 * 16384 * 151936
    )


def test_per_element_gate_catches_what_a_max_relative_check_misses(bench) -> None:
    expected = torch.tensor([10.0, 1e-3, 1e-6, -2e-8])
    wrong = expected.clone()
    wrong[2:] *= 1.5  # tiny elements 50% off
    max_relative = ((wrong - expected).abs().max() / expected.abs().max()).item()
    assert max_relative < 1e-6  # a max-over-the-tensor check would pass this
    count, worst = bench.per_element_violations(wrong, expected, expected.abs(), 1e-3)
    assert count == 2 and worst > 100
    assert bench.per_element_violations(expected * (1 + 1e-5), expected, expected.abs(), 1e-3)[0] == 0
    assert (
        bench.per_element_violations(torch.full((2,), float("nan")), expected[:2], expected[:2].abs(), 1e-3)[
            0
        ]
        == 2
    )


def test_gate_passes_the_op_and_fails_a_broken_one(bench, monkeypatch: pytest.MonkeyPatch) -> None:
    import megatron_s2l.kernels as kernels

    args = bench.parse_args(["--cpu-smoke", "--backend", "torch"])
    torch.manual_seed(0)  # the inputs the tool draws (its main seeds 0), not whatever earlier tests left
    lines = bench.correctness_gate(args, torch.device("cpu"))
    assert lines and all(line.startswith("ok") for line in lines), lines

    real_op = kernels.logprobs_and_entropy

    class SmallGradsOff(torch.autograd.Function):
        """Identity forward; backward scales the gradient of elements below 1e-3 by 1.3."""

        @staticmethod
        def forward(ctx, x):
            return x.view_as(x)

        @staticmethod
        def backward(ctx, grad):
            return torch.where(grad.abs() < 1e-3, grad * 1.3, grad)

    monkeypatch.setattr(
        kernels, "logprobs_and_entropy", lambda x, *a, **kw: real_op(SmallGradsOff.apply(x), *a, **kw)
    )
    torch.manual_seed(0)
    lines = bench.correctness_gate(args, torch.device("cpu"))
    assert any(line.startswith("FAIL ours dlogits:") for line in lines), lines


def test_table_has_one_line_per_row_and_marks_out_of_memory(bench) -> None:
    row = {"tokens": 16384, "width": 151936, "dtype": "bf16", "entropy": True, "impl": "ours", "mode": "fwd"}
    ok = row | {"ms": 1.5, "peak_gib": 0.25, "pct_floor": 80.0, "speedup": 4.0}
    oom = row | {"impl": "torch", "ms": float("nan"), "peak_gib": float("nan"), "pct_floor": float("nan")}
    lines = bench.format_table([ok, oom | {"speedup": float("nan")}]).splitlines()
    assert len(lines) == 4 and "peak GiB" in lines[0]
    assert "1.500" in lines[2] and "80.0" in lines[2] and "4.00" in lines[2]
    assert "OOM" in lines[3]


def test_benchmarks_refuse_cpu_without_their_smoke_mode(bench, capsys: pytest.CaptureFixture) -> None:
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    assert bench.main([]) == 2
    assert load_tool("bench_learner_step").main([]) == 2
    assert "GPU" in capsys.readouterr().err


def test_learner_step_num_layers_keeps_the_widths() -> None:
    tool = load_tool("bench_learner_step")
    args = tool.parse_args(["--shape", "qwen3-8b", "--num-layers", "4"])
    arch = tool.bench_arch(args)
    assert arch.num_hidden_layers == 4
    assert (arch.hidden_size, arch.intermediate_size, arch.vocab_size) == (4096, 12288, 151936)
    assert tool.bench_arch(tool.parse_args(["--shape", "qwen3-14b"])).num_hidden_layers == 40
    assert args.prompt_len == 512
