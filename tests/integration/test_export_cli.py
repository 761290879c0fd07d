"""`s2l export RUN_DIR@STEP --output DIR` on a run checkpoint made without servers: two gloo ranks
(TP 2) train one step and save it as a run checkpoint (run/checkpoint.py, as `s2l train` does);
the exported directory loads in `transformers` and its every tensor equals the trained learner's
(not the base model's); a second export is reused; a foreign --output directory is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from distributed_utils import run_ranks
from test_learner_train_step import grpo_batch

import yaml
from megatron_s2l.cli import main

pytestmark = pytest.mark.slow

NUM_GPUS = 0
STEP = 3


def _train_and_save(rank: int, world_size: int, root: str) -> dict[str, torch.Tensor]:
    from megatron_s2l.config import load_config
    from megatron_s2l.learner.learner import Learner
    from megatron_s2l.run.checkpoint import save_run_checkpoint
    from megatron_s2l.run.rundir import RunDir

    run = RunDir(Path(root))
    cfg = load_config(run.config_file)
    learner = Learner.from_hf(cfg.learner, cfg.model.learner, loss=cfg.algo.loss)
    batch = grpo_batch(learner.arch.vocab_size)
    batch.old_logprobs = learner.compute_logprobs(batch)
    learner.train_step(batch)
    save_run_checkpoint(run.checkpoints, STEP, learner, {"driver": {"position": STEP}}, keep_last=2)
    return {name: tensor.clone() for name, tensor in learner.iter_hf_weights()}


def write_run_config(run_dir: Path, hf_dir: Path) -> None:
    from megatron_s2l.config import load_config
    from megatron_s2l.configio import to_dict

    demo_yaml = Path(__file__).resolve().parents[2] / "yaml" / "demo-cpu.yaml"
    overrides = [
        f"model.learner={hf_dir}",
        "model.explorer=''",
        "schedule.t_mix=0",
        "ranks=2",
        "learner.parallel.tensor_parallel=2",
        "learner.parallel.micro_batch_size=1",
        "learner.optimizer.lr=1e-2",  # one step moves every weight visibly
        "learner.optimizer.warmup_steps=0",
    ]
    cfg = load_config(demo_yaml, overrides)
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def test_export_matches_the_trained_weights(tiny_qwen3_dirs, tmp_path: Path, capsys) -> None:
    from transformers import AutoModelForCausalLM

    hf_dir = tiny_qwen3_dirs["untied"]
    run_dir = tmp_path / "run"
    write_run_config(run_dir, hf_dir)
    trained, _ = run_ranks(_train_and_save, 2, str(run_dir), timeout=400)

    out = tmp_path / "exported"
    assert main(["export", f"{run_dir}@{STEP}", "--output", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    model = AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32)
    exported = model.state_dict()
    base = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).state_dict()
    assert set(exported) == set(trained) == set(base)
    for name, tensor in trained.items():
        assert exported[name].equal(tensor.to(exported[name].dtype)), name
    assert any(not base[name].equal(exported[name]) for name in trained)  # the trained step, not the base
    assert (out / "tokenizer.json").is_file()

    # A complete export is reused (no re-export: the files keep their times).
    stamp = (out / "config.json").stat().st_mtime_ns
    assert main(["export", f"{run_dir}@{STEP}", "--output", str(out)]) == 0
    assert (out / "config.json").stat().st_mtime_ns == stamp

    # Refusals, before any rank starts: a step never saved, a directory holding something else.
    assert main(["export", f"{run_dir}@{STEP + 1}", "--output", str(tmp_path / "x")]) == 2
    assert "no complete checkpoint of step 4 (saved: ['step_000003'])" in capsys.readouterr().err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["export", f"{run_dir}@{STEP}", "--output", str(foreign)]) == 2
    assert "exists and is not an export" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "mine"
    assert main(["export", f"{run_dir}", "--output", str(foreign)]) == 2
    assert "expected RUN_DIR@STEP" in capsys.readouterr().err
