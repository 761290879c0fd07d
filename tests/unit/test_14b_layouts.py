"""The 14B configs: a layout for 2 nodes of 8 GPUs (yaml/qwen3-14b-s2l-2nodes.yaml, and the paper
config's documented overrides) that `s2l plan` fits and `s2l launch` places, and headers whose
memory figure is the one `s2l plan` prints.

    .venv/bin/pytest tests/unit/test_14b_layouts.py -q

NUM_GPUS = 0 (plans and dry-runs only).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from megatron_s2l.cli import main

NUM_GPUS = 0
ROOT = Path(__file__).resolve().parents[2]
TWO_NODES = "yaml/qwen3-14b-s2l-2nodes.yaml"
PAPER_14B = "yaml/paper/qwen3-14b-4b-s2l.yaml"
PAPER_2_NODE_OVERRIDES = ["rollout.learner.num_engines=2", "rollout.learner.engine.tp=2"]
"""What yaml/paper/qwen3-14b-4b-s2l.yaml's header tells a 2-node user to add."""


def plan_json(capsys: pytest.CaptureFixture[str], config: str, *overrides: str) -> tuple[int, dict]:
    status = main(["plan", "--config", str(ROOT / config), *overrides, "--json"])
    return status, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize(("config", "overrides"), [(TWO_NODES, []), (PAPER_14B, PAPER_2_NODE_OVERRIDES)])
def test_14b_fits_and_launches_on_two_nodes(
    capsys: pytest.CaptureFixture[str], config: str, overrides: list[str]
) -> None:
    status, plan = plan_json(capsys, config, *overrides)
    assert status == 0 and plan["fits"] and plan["gpus"] == {"learner": 8, "engines": 8, "total": 16}
    assert main(["launch", "--config", str(ROOT / config), *overrides, "--hosts", "n0,n1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "learner 2 x TP 2, explorer 4 x TP 1" in out
    # Without the overrides the 4- and 3-node layouts refuse 2 hosts, naming what they need.
    base = "yaml/qwen3-14b-s2l.yaml" if config == TWO_NODES else config
    assert main(["launch", "--config", str(ROOT / base), "--hosts", "n0,n1", "--dry-run"]) == 2
    assert "needs" in capsys.readouterr().err


@pytest.mark.parametrize("config", ["yaml/qwen3-14b-s2l.yaml", TWO_NODES, PAPER_14B])
def test_14b_headers_state_the_memory_s2l_plan_prints(
    capsys: pytest.CaptureFixture[str], config: str
) -> None:
    header = "".join(
        line for line in (ROOT / config).read_text().splitlines(keepends=True) if line.startswith("#")
    )
    stated = re.search(r"`s2l plan`(?: prints|:) (\d+\.\d+) GiB of 80", header.replace("\n# ", " "))
    assert stated, f"{config}: the header states no `s2l plan` figure"
    _, plan = plan_json(capsys, config)
    assert f"{plan['learner']['total_gib']:.2f}" == stated.group(1)
    assert "micro-batch 2" not in header  # a token budget is set: micro_batch_size is not what runs


def test_plan_says_the_micro_batch_count_is_a_bound(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--config", str(ROOT / TWO_NODES)]) == 0
    assert "up to 512 micro-batches per DP rank and update" in capsys.readouterr().out
