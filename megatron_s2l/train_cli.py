"""`s2l train` and `s2l demo`: checks before anything starts, the run directory, the learner ranks.

Ranks: under torchrun (RANK set) this process is one rank; otherwise `ranks` processes are spawned
on this node (gloo on CPU, NCCL on GPU), rank 0 being the driver.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import traceback
import warnings
from pathlib import Path

import yaml
from megatron_s2l.config import S2LConfig, load_config
from megatron_s2l.configio import ConfigError, build, to_dict


def preflight(cfg: S2LConfig) -> None:
    """Everything that can be checked before a rank or server starts, with errors naming the key."""
    from megatron_s2l.data import read_prompt_file
    from megatron_s2l.learner.hf_config import read_qwen3_config
    from megatron_s2l.learner.parallel import check_parallel_sizes
    from megatron_s2l.rollout.tokenizer_check import check_same_tokenizer

    paths = [("model.learner", cfg.model.learner)]
    if cfg.schedule.t_mix > 0:
        paths.append(("model.explorer", cfg.model.explorer))
    paths += [(f"data.train_files[{i}]", f) for i, f in enumerate(cfg.data.train_files)]
    paths += [(f"data.eval_files[{i}]", f) for i, f in enumerate(cfg.data.eval_files)]
    for key, path in paths:
        if not path or not Path(path).exists():
            raise ConfigError(f"{key}: {path!r} does not exist")
    if not cfg.data.train_files:
        raise ConfigError("data.train_files: no training prompts given")
    for i, path in enumerate(cfg.data.train_files):
        try:  # the first row: an empty or malformed file fails here, not after the servers start
            next(read_prompt_file(path))
        except (ValueError, StopIteration) as e:
            raise ConfigError(f"data.train_files[{i}]: {e or f'{path} holds no prompts'}") from e
    for key, path in paths[:2] if cfg.schedule.t_mix > 0 else paths[:1]:
        if not (Path(path) / "config.json").is_file():
            raise ConfigError(f"{key}: {path!r} is not a Hugging Face checkpoint (no config.json)")
    if cfg.schedule.t_mix > 0:
        check_same_tokenizer(cfg.model.explorer, cfg.model.learner)
    arch, _ = read_qwen3_config(cfg.model.learner)
    try:
        check_parallel_sizes(
            cfg.learner.parallel,
            cfg.ranks,
            num_layers=arch.num_layers,
            num_heads=arch.num_heads,
            num_query_groups=arch.num_kv_heads,
        )
    except ValueError as e:
        raise ConfigError(f"learner.parallel / ranks: {e}") from e


def _rank_main(rank: int, world_size: int, port: int, cfg_dict: dict, run_dir: str, resume: bool) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    from megatron_s2l.train import train

    warnings.filterwarnings("ignore", module="megatron")  # TE/Apex fallbacks: expected on CPU
    train(build(S2LConfig, cfg_dict), Path(run_dir), resume=resume)


def run_training(cfg: S2LConfig, run_dir: Path, *, resume: bool) -> None:
    """Run `train` on `cfg.ranks` ranks (or as this torchrun rank)."""
    if "RANK" in os.environ:
        from megatron_s2l.train import train

        train(cfg, run_dir, resume=resume)
        return
    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(
        _rank_main,
        args=(cfg.ranks, port, to_dict(cfg), str(run_dir), resume),
        nprocs=cfg.ranks,
        start_method="spawn",
        join=True,
    )


BASE_FINGERPRINT = "learner_base.sha256"
"""The learner's base checkpoint fingerprint, written when a run starts and checked on resume: the
KL loss's reference policy is rebuilt from that checkpoint, so it must not have changed."""


def prepare_run_dir(cfg: S2LConfig, *, resume: bool) -> Path:
    from megatron_s2l.learner.hf_loader import checkpoint_fingerprint

    run_dir = Path(cfg.logging.run_dir.format(name=cfg.name))
    if not resume and (run_dir / "metrics.jsonl").exists():
        raise ConfigError(f"logging.run_dir: {run_dir} already holds a run; resume it or choose another name")
    fingerprint = checkpoint_fingerprint(cfg.model.learner)
    recorded = run_dir / BASE_FINGERPRINT
    if resume and recorded.is_file() and recorded.read_text().strip() != fingerprint:
        raise ConfigError(
            f"model.learner: {cfg.model.learner} is not the base checkpoint {run_dir} started from "
            f"(its fingerprint changed; see {recorded}): the reference policy and the tokenizer come "
            "from it. Restore that checkpoint, or start a new run."
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    recorded.write_text(fingerprint + "\n")
    (run_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return run_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML run config (yaml/*.yaml)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def run(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.resume is None):
        raise ConfigError("give exactly one of --config YAML or --resume RUN_DIR")
    path = args.config or args.resume / "config.yaml"
    cfg = load_config(path, args.overrides)
    preflight(cfg)
    run_dir = prepare_run_dir(cfg, resume=args.resume is not None)
    try:
        run_training(cfg, run_dir, resume=args.resume is not None)
    except Exception:
        traceback.print_exc()
        print(f"s2l train: the run failed; its state is in {run_dir}", file=sys.stderr)
        return 1
    print(f"run finished: {run_dir}")
    return 0
