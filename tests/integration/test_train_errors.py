"""`s2l train` rejects bad input before any rank or server starts, naming the key or file."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_s2l.demo.tiny import make_tiny_qwen3, make_tokenizer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("train_errors")
    learner = make_tiny_qwen3(root / "learner", seed=1)
    make_tiny_qwen3(root / "explorer", tokenizer_dir=learner, tie_word_embeddings=True, seed=2)
    make_tokenizer(root / "other_tok", vocab_size=400, seed=9)
    make_tiny_qwen3(root / "other", tokenizer_dir=root / "other_tok", seed=3)
    row = {
        "data_source": "math_dapo",
        "prompt": [{"role": "user", "content": "1+1?"}],
        "reward_model": {"ground_truth": "2"},
    }
    (root / "train.jsonl").write_text(json.dumps(row) + "\n")
    (root / "empty.jsonl").write_text("")
    rows = [row, {**row, "data_source": "my_source"}, row]  # an unknown source in the middle
    (root / "unknown_source.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    rows = [row, {**row, "prompt": "not a list of messages"}, row]  # a bad row in the middle
    (root / "bad_row.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {
        "name": "err",
        "model": {"learner": str(learner), "explorer": str(root / "explorer")},
        "schedule": {"steps": 2, "t_mix": 2, "group_size": 2, "prompts_per_step": 1},
        "data": {"train_files": [str(root / "train.jsonl")], "template": "raw"},
        "logging": {"run_dir": str(root / "runs" / "{name}")},
    }
    (root / "run.yaml").write_text(json.dumps(config))  # JSON is YAML
    # A sharded checkpoint with one shard gone (an interrupted copy).
    sharded = make_tiny_qwen3(root / "sharded", tokenizer_dir=learner, seed=4, max_shard_size="50KB")
    next(iter(sorted(sharded.glob("model-*.safetensors")))).unlink()
    return {"root": root, "config": root / "run.yaml"}


def s2l_train(
    config: Path, *overrides: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    s2l = Path(sys.executable).parent / "s2l"
    cmd = [str(s2l), "train", "--config", str(config), *overrides]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["schedule.bogus=1"], "schedule.bogus: unknown key"),
        (["model.learner=/nonexistent/model"], "model.learner: '/nonexistent/model' does not exist"),
        (["model.explorer={root}/other"], "tokenizer"),
        (
            [
                "ranks=2",
                "learner.parallel.tensor_parallel=2",
                "learner.parallel.pipeline_parallel=1",
                "model.learner={root}/learner",
                "learner.parallel.micro_batch_size=1",
                "schedule.prompts_per_step=1",
                "schedule.group_size=2",
                "learner.parallel.pipeline_parallel=3",
            ],
            "must be a multiple of tensor_parallel * pipeline_parallel",
        ),
        (
            ["ranks=3", "learner.parallel.tensor_parallel=3", "schedule.group_size=3"],
            "tensor_parallel=3 does not divide the model's 4 attention heads",
        ),
        (
            ["data.train_files=[{root}/empty.jsonl]"],
            "data.train_files: {root}/empty.jsonl: the file has no rows",
        ),
        (
            ["data.train_files=[{root}/unknown_source.jsonl]"],
            "data.train_files: {root}/unknown_source.jsonl line 2: field 'data_source': unknown data "
            "source 'my_source'",
        ),
        (["data.train_files=[{root}/bad_row.jsonl]"], "bad_row.jsonl line 2: field 'prompt'"),
        (["schedule.prompts_per_step=2"], "schedule.prompts_per_step (2) exceeds the 1 training prompts"),
        (
            ["model.learner={root}/sharded"],
            "model.learner: {root}/sharded/model.safetensors.index.json names weight",
        ),
        (
            [
                "schedule.t_mix=0",
                "model.explorer=''",
                "schedule.group_size=3",
                "learner.parallel.micro_batch_size=2",
            ],
            "must be divisible by data-parallel size",
        ),
    ],
)
def test_bad_input_fails_fast_with_a_named_key(setup, overrides: list[str], message: str) -> None:
    root = setup["root"]
    out = s2l_train(setup["config"], *(o.replace("{root}", str(root)) for o in overrides))
    assert out.returncode == 2, out.stdout + out.stderr
    assert message.replace("{root}", str(root)) in out.stderr
    assert not (root / "runs" / "err").exists(), "nothing may start before the checks pass"


def test_torchrun_world_size_must_match_ranks(setup) -> None:
    """Under torchrun every rank runs `s2l train`: a WORLD_SIZE that is not `ranks` fails before any
    process group or server starts (it used to fail at step 1, after the engines had started)."""
    root = setup["root"]
    out = s2l_train(setup["config"], env={**os.environ, "WORLD_SIZE": "2"})
    assert (
        out.returncode == 2 and "ranks: the config has 1 learner ranks; the launcher started 2" in out.stderr
    )
    assert not (root / "runs" / "err").exists()
