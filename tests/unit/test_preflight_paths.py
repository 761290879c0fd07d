"""`check_paths` (megatron_s2l/run/preflight.py) and `s2l train --check-only`: every missing model
file or prompt file is named, with its config key, before anything loads or is created.

    .venv/bin/pytest tests/unit/test_preflight_paths.py -q

NUM_GPUS = 0. Real tiny checkpoints (config.json, tokenizer, safetensors) written here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from megatron_s2l.cli import main
from megatron_s2l.config import load_config
from megatron_s2l.demo.tiny import make_tiny_qwen3
from megatron_s2l.run.preflight import check_paths

NUM_GPUS = 0


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("preflight")
    learner = make_tiny_qwen3(root / "learner", seed=1)
    make_tiny_qwen3(root / "explorer", tokenizer_dir=learner, tie_word_embeddings=True, seed=2)
    row = {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": "1+1?"}],
        "reward_model": {"ground_truth": "2"},
    }
    for name in ("train.jsonl", "eval.jsonl"):
        (root / name).write_text(json.dumps(row) + "\n")
    config = {
        "name": "pre",
        "model": {"learner": str(learner), "explorer": str(root / "explorer")},
        "schedule": {"steps": 2, "t_mix": 2, "group_size": 2, "prompts_per_step": 1},
        "data": {
            "train_files": [str(root / "train.jsonl")],
            "eval_files": [str(root / "eval.jsonl")],
            "template": "raw",
        },
        "logging": {"run_dir": str(root / "runs" / "{name}")},
    }
    (root / "run.yaml").write_text(json.dumps(config))
    return root


def test_complete_paths_pass(files: Path) -> None:
    assert check_paths(load_config(files / "run.yaml")) == []


def test_every_problem_is_named_at_once(files: Path, tmp_path: Path) -> None:
    no_tokenizer = tmp_path / "no_tokenizer"
    shutil.copytree(files / "learner", no_tokenizer)
    for name in ("tokenizer.json", "vocab.json", "tokenizer.model"):
        (no_tokenizer / name).unlink(missing_ok=True)
    no_weights = tmp_path / "no_weights"
    shutil.copytree(files / "explorer", no_weights, ignore=shutil.ignore_patterns("*.safetensors*"))
    cfg = load_config(
        files / "run.yaml",
        [
            f"model.learner={no_tokenizer}",
            f"model.explorer={no_weights}",
            f"data.train_files=[{files / 'train.jsonl'},/shared/data/dapo-math-17k.parquet]",
            "data.eval_files=[/shared/data/aime24.parquet]",
        ],
    )
    assert check_paths(cfg) == [
        f"model.learner: '{no_tokenizer}' has no tokenizer (none of "
        + "tokenizer.json, tokenizer.model, vocab.json)",
        f"model.explorer: '{no_weights}' has no *.safetensors weights",
        "data.train_files[1]: '/shared/data/dapo-math-17k.parquet' does not exist",
        "data.eval_files[0]: '/shared/data/aime24.parquet' does not exist",
    ]
    missing = load_config(files / "run.yaml", ["model.learner=/models/absent", f"model.explorer={files}"])
    assert check_paths(missing) == [
        "model.learner: '/models/absent' does not exist",
        f"model.explorer: '{files}' is not a Hugging Face checkpoint (no config.json)",
    ]
    # GRPO (t_mix 0) reads no explorer: its path is not checked.
    grpo = load_config(files / "run.yaml", ["schedule.t_mix=0", "model.explorer=/models/absent"])
    assert check_paths(grpo) == []


def test_check_only_runs_the_preflight_and_creates_nothing(
    files: Path, capsys: pytest.CaptureFixture
) -> None:
    run_dir = files / "runs" / "pre"
    assert main(["train", "--config", str(files / "run.yaml"), "--check-only"]) == 0
    assert "every pre-flight check passed" in capsys.readouterr().out
    assert not run_dir.exists()
    bad = ["data.eval_files=[/shared/data/aime25.parquet]", "model.explorer=/models/Qwen3-1.7B-Base"]
    assert main(["train", "--config", str(files / "run.yaml"), "--check-only", *bad]) == 2
    err = capsys.readouterr().err
    assert "model.explorer: '/models/Qwen3-1.7B-Base' does not exist" in err
    assert "data.eval_files[0]: '/shared/data/aime25.parquet' does not exist" in err
    assert not run_dir.exists()
