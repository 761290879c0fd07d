"""The input paths a run reads, checked before anything loads: on a cluster a wrong path on the
shared file system would otherwise show only after the engines have loaded their models.

    problems = check_paths(cfg)   # [] when every path is there; else one line per problem, naming
                                  # the config key and the path, e.g. "model.learner: '/m/x' does not exist"

`s2l train` raises them before any rank or server starts (`s2l train --check-only` runs every
pre-flight check and exits: 0 when the run could start, 2 with the problems otherwise).
"""

from __future__ import annotations

from pathlib import Path

from megatron_s2l.config import S2LConfig
from megatron_s2l.run.wandb_log import wandb_problems

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
"""A Hugging Face checkpoint has its tokenizer when it has one of these (fast, sentencepiece, BPE)."""


def model_problems(key: str, path: str) -> list[str]:
    """What is missing from the Hugging Face checkpoint directory `path` (config key `key`)."""
    if not path:
        return [f"{key}: not set (a Hugging Face checkpoint directory)"]
    root = Path(path)
    if not root.exists():
        return [f"{key}: {path!r} does not exist"]
    if not (root / "config.json").is_file():
        return [f"{key}: {path!r} is not a Hugging Face checkpoint (no config.json)"]
    problems = []
    if not any((root / name).is_file() for name in TOKENIZER_FILES):
        problems.append(f"{key}: {path!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    if not any(root.glob("*.safetensors")):
        problems.append(f"{key}: {path!r} has no *.safetensors weights")
    return problems


def check_paths(cfg: S2LConfig) -> list[str]:
    """Every problem with the models and prompt files `cfg` reads (all of them, not only the first):
    each model directory has config.json, a tokenizer and safetensors weights; each prompt file
    exists; the explorer cache file exists; the `wandb` package is there when logging.wandb is on.
    The explorer and its cache count only when the run mixes (schedule.t_mix > 0)."""
    problems = model_problems("model.learner", cfg.model.learner)
    if cfg.schedule.t_mix > 0:
        problems += model_problems("model.explorer", cfg.model.explorer)
    if not cfg.data.train_files:
        problems.append("data.train_files: no training prompts given")
    for key in ("train_files", "eval_files"):
        for i, path in enumerate(getattr(cfg.data, key)):
            if not Path(path).is_file():
                problems.append(f"data.{key}[{i}]: {path!r} does not exist")
    cache = cfg.rollout.explorer_cache_path
    if cfg.schedule.t_mix > 0 and cache is not None and not Path(cache).is_file():
        problems.append(
            f"rollout.explorer_cache_path: {cache!r} does not exist (fill it: tools/fill_explorer_cache.py)"
        )
    return problems + wandb_problems(cfg.logging.wandb)
