"""The CPU demo's assets: the synthetic arithmetic task, one shared tokenizer, and two tiny
Qwen3-architecture models (the explorer smaller than the learner), each warmed up by a short
supervised pass over worked solutions through the project's own Megatron learner, then exported to
Hugging Face format. Everything lands in a cache folder; a rerun with the same recipe reuses it.

    python tools/make_demo_models.py [--cache cache/demo]
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from megatron_s2l.data import encode_prompts, read_prompt_file
from megatron_s2l.demo.task import without_answer_line, write_arithmetic_dataset
from megatron_s2l.logs import configure_logging


@dataclass(frozen=True, slots=True)
class ModelRecipe:
    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    warmup_steps: int
    warmup_lr: float
    answer_line_share: float = 1.0
    """Share of the warm-up solutions that end with the reward's `Answer:` line (the others end
    "The result is N.", which scores as wrong): below 1, RL has a format to learn."""


@dataclass(frozen=True, slots=True)
class DemoRecipe:
    seed: int = 0
    num_train: int = 700
    num_eval: int = 64
    num_ops: int = 2
    max_operand: int = 5
    vocab_size: int = 384
    warmup_batch: int = 32
    explorer: ModelRecipe = ModelRecipe(2, 64, 128, 2, 1, 400, 3e-3)
    learner: ModelRecipe = ModelRecipe(4, 128, 256, 4, 2, 400, 3e-3, answer_line_share=0.3)

    def stamp(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class DemoAssets:
    train_file: Path
    eval_file: Path
    explorer_dir: Path
    learner_dir: Path


def _assets(cache: Path) -> DemoAssets:
    return DemoAssets(cache / "train.jsonl", cache / "eval.jsonl", cache / "explorer", cache / "learner")


def prepare_demo(cache_dir: str | Path, recipe: DemoRecipe = DemoRecipe()) -> DemoAssets:
    """Build (or reuse) the demo's data and models under `cache_dir`."""
    cache = Path(cache_dir)
    assets = _assets(cache)
    stamp_file = cache / "RECIPE"
    if stamp_file.is_file() and stamp_file.read_text() == recipe.stamp():
        print(f"demo assets: reusing {cache}", flush=True)
        return assets
    if cache.exists():
        shutil.rmtree(cache)
    cache.mkdir(parents=True)
    start = time.perf_counter()
    _write_task(assets, recipe)
    from megatron_s2l.demo.tiny import make_tiny_qwen3, make_tokenizer

    rows = list(read_prompt_file(assets.train_file))
    corpus = [r.messages[0]["content"] + "\n" + r.extra_info["solution"] for r in rows]
    make_tokenizer(cache / "tokenizer", vocab_size=recipe.vocab_size, seed=recipe.seed, corpus=corpus)
    for name, model in (("explorer", recipe.explorer), ("learner", recipe.learner)):
        init_dir = cache / f"{name}-init"
        make_tiny_qwen3(
            init_dir,
            tokenizer_dir=cache / "tokenizer",
            num_layers=model.num_layers,
            hidden_size=model.hidden_size,
            intermediate_size=model.intermediate_size,
            num_heads=model.num_heads,
            num_kv_heads=model.num_kv_heads,
            head_dim=32,
            tie_word_embeddings=name == "explorer",
            init_std=0.02,
            seed=recipe.seed + len(name),
        )
        print(f"demo assets: supervised warm-up of the {name} ({model.warmup_steps} steps)", flush=True)
        _run_in_child(_warmup, init_dir, getattr(assets, f"{name}_dir"), assets.train_file, model, recipe)
        shutil.rmtree(init_dir)
    stamp_file.write_text(recipe.stamp())
    print(f"demo assets: built in {time.perf_counter() - start:.0f} s under {cache}", flush=True)
    return assets


def _write_task(assets: DemoAssets, recipe: DemoRecipe) -> None:
    """Distinct problems, split into held-out eval rows and training rows (disjoint by construction)."""
    every = assets.train_file.with_suffix(".all.jsonl")
    write_arithmetic_dataset(
        every,
        recipe.num_train + recipe.num_eval,
        seed=recipe.seed,
        num_ops=recipe.num_ops,
        max_operand=recipe.max_operand,
    )
    rows = every.read_text().splitlines(keepends=True)
    assets.eval_file.write_text("".join(rows[: recipe.num_eval]))
    assets.train_file.write_text("".join(rows[recipe.num_eval :]))
    every.unlink()


def _run_in_child(fn, *args) -> None:
    """Run `fn(*args)` in a fresh spawned process (its own process group and Megatron state)."""
    ctx = torch.multiprocessing.get_context("spawn")
    proc = ctx.Process(target=_child_main, args=(fn, *args))
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"{fn.__name__} failed in its child process (exit code {proc.exitcode})")


def _child_main(fn, *args) -> None:
    configure_logging()
    fn(*args)


def sft_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int):
    """A TrainBatch whose loss covers the response tokens (advantage 1: the policy-gradient step
    with old log-probs equal to the current ones has exactly the token-mean NLL gradient)."""
    from megatron_s2l.learner.batch import TrainBatch

    return TrainBatch.from_sequences(prompts, responses, torch.ones(len(prompts)), pad_id=pad_id)


def _warmup(init_dir: Path, out_dir: Path, train_file: Path, model: ModelRecipe, recipe: DemoRecipe) -> None:
    from transformers import AutoTokenizer

    from megatron_s2l.learner.learner import Learner, LearnerConfig
    from megatron_s2l.learner.optimizer import OptimizerConfig
    from megatron_s2l.learner.parallel import ParallelConfig

    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(init_dir))
    rows = list(read_prompt_file(train_file))
    prompts = encode_prompts([r.messages for r in rows], tokenizer, "raw")
    format_rng = random.Random(f"{recipe.seed}/format")
    solutions = [
        r.extra_info["solution"]
        if format_rng.random() < model.answer_line_share
        else without_answer_line(r.extra_info["solution"])
        for r in rows
    ]
    responses = [[*tokenizer(text).input_ids, tokenizer.eos_token_id] for text in solutions]
    optimizer = OptimizerConfig(
        lr=model.warmup_lr,
        min_lr=model.warmup_lr / 10,
        lr_schedule="cosine",
        warmup_steps=model.warmup_steps // 10,
        decay_steps=model.warmup_steps,
    )
    parallel = ParallelConfig(micro_batch_size=recipe.warmup_batch)
    learner = Learner.from_hf(LearnerConfig(optimizer=optimizer, parallel=parallel), init_dir)
    rng = random.Random(recipe.seed)
    for step in range(1, model.warmup_steps + 1):
        idx = rng.sample(range(len(rows)), recipe.warmup_batch)
        batch = sft_batch([prompts[i] for i in idx], [responses[i] for i in idx], tokenizer.pad_token_id)
        batch.old_logprobs = learner.compute_logprobs(batch)
        nll = -(batch.old_logprobs * batch.loss_mask).sum().item() / batch.loss_mask.sum().item()
        learner.train_step(batch)
        if step % 25 == 0 or step == 1:
            print(f"  warm-up step {step}/{model.warmup_steps}: token NLL {nll:.3f}", flush=True)
    learner.export_hf(out_dir)
