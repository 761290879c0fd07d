"""Where `s2l eval` puts its SGLang servers: on GPUs each on its own `--tp` of `--gpus` (default:
every visible GPU, as many servers as fit), as `s2l serve` places them; on CPU on disjoint cores.
Fake GPU lists through CUDA_VISIBLE_DEVICES; no server starts."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from megatron_s2l.cli import main
from megatron_s2l.eval.cli import add_arguments, place_engines
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig
from megatron_s2l.rollout.placement import parse_gpus, plan_pool_gpus
from megatron_s2l.rollout.pool import EnginePool

NUM_GPUS = 0


def eval_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--model", "m", "--data", "d.parquet", *argv])


@pytest.fixture
def eight_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3,4,5,6,7")


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ((), [[str(i)] for i in range(8)]),  # default: one TP-1 server per visible GPU
        (("--tp", "2"), [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]),
        (("--tp", "4", "--num-engines", "1"), [["0", "1", "2", "3"]]),
        (("--tp", "2", "--gpus", "5,6,7"), [["5", "6"]]),  # GPU 7 stays idle: no half engine
        (("--gpus", "GPU-a,GPU-b"), [["GPU-a"], ["GPU-b"]]),  # UUIDs pass through
        (("--num-engines", "8"), [[str(i)] for i in range(8)]),  # the case: 8 GPUs, not GPU 0 x 8
    ],
)
def test_gpu_plan(eight_gpus: None, argv: tuple, expected: list) -> None:
    place = place_engines(eval_args(*argv), "cuda")
    assert place.gpus == expected and place.num_engines == len(expected) and place.cores is None
    used = [gpu for engine in place.gpus for gpu in engine]
    assert len(used) == len(set(used))


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (("--num-engines", "8", "--tp", "2"), "need 16 GPUs, 8 are free"),
        (("--tp", "4", "--gpus", "0,1"), "one engine at TP 4 needs 4 GPUs, 2 are given"),
        (("--gpus", "0,0"), "distinct comma-separated GPU ids"),
        (
            (
                "--num-engines",
                "0",
            ),
            "--num-engines must be >= 1",
        ),
    ],
)
def test_gpu_plan_refusals(eight_gpus: None, argv: tuple, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        place_engines(eval_args(*argv), "cuda")


def test_servers_get_the_planned_gpus(eight_gpus: None, tmp_path: Path) -> None:
    """What the pool hands each server process: its own CUDA_VISIBLE_DEVICES."""
    place = place_engines(eval_args("--tp", "2"), "cuda")
    config = EnginePoolConfig(num_engines=place.num_engines, engine=EngineConfig(device="cuda", tp=2))
    pool = EnginePool("eval", tmp_path, config, tmp_path, place.cores, place.gpus)
    assert [s.process.env["CUDA_VISIBLE_DEVICES"] for s in pool.servers] == ["0,1", "2,3", "4,5", "6,7"]


def test_cpu_engines_get_their_own_cores() -> None:
    place = place_engines(eval_args(), "cpu")
    assert (place.num_engines, place.gpus) == (1, None)
    assert place.cores == [frozenset(os.sched_getaffinity(0))]
    place = place_engines(eval_args("--num-engines", "2"), "cpu")
    assert len(place.cores) == 2 and all(place.cores)
    if len(os.sched_getaffinity(0)) >= 2:
        assert not place.cores[0] & place.cores[1]
    with pytest.raises(ValueError, match="--gpus: the engines run on CPU"):
        place_engines(eval_args("--gpus", "0"), "cpu")


def test_placement_helpers(eight_gpus: None) -> None:
    assert parse_gpus(None) == [str(i) for i in range(8)]
    assert parse_gpus(" 3, 4 ") == ["3", "4"]
    assert plan_pool_gpus(3, parse_gpus(None)) == [["0", "1", "2"], ["3", "4", "5"]]


def test_help_shows_gpus(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["eval", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--gpus" in out and "--num-engines" in out
