"""`s2l train` and `s2l demo`: checks before anything starts, the run directory, the learner ranks.

Ranks: under torchrun (RANK set) this process is one rank; otherwise `ranks` processes are spawned
on this node (gloo on CPU, NCCL on GPU), rank 0 being the driver.

Exit status: 0 the run finished; 1 it failed; 2 the config was refused before anything started;
75 (STOPPED_EXIT_CODE) SIGTERM stopped it after a step, with a checkpoint: `s2l train --resume RUN_DIR`
continues it (megatron_s2l/run/stop.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

import yaml
from megatron_s2l.config import S2LConfig, load_config
from megatron_s2l.configio import ConfigError, build, to_dict
from megatron_s2l.logs import configure_logging
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.stop import STOPPED_EXIT_CODE, forwarding_sigterm_to_children, stopped_at


def preflight(cfg: S2LConfig) -> None:
    """Everything that can be checked before a rank or server starts, with errors naming the key."""
    from megatron_s2l.learner.hf_config import read_qwen3_config
    from megatron_s2l.learner.hf_loader import SafetensorsSource
    from megatron_s2l.learner.parallel import check_parallel_sizes
    from megatron_s2l.rollout.colocate import colocate_config_errors
    from megatron_s2l.rollout.tokenizer_check import check_same_tokenizer
    from megatron_s2l.run.preflight import check_paths

    problems = check_paths(cfg)
    if problems:
        raise ConfigError("\n".join(problems))
    models = [("model.learner", cfg.model.learner)]
    if cfg.schedule.t_mix > 0:
        models.append(("model.explorer", cfg.model.explorer))
    for key, path in models:
        try:
            SafetensorsSource(path)  # every weight file there, shards included
        except FileNotFoundError as e:
            raise ConfigError(f"{key}: {e}") from e
    if cfg.schedule.t_mix > 0:
        check_same_tokenizer(cfg.model.explorer, cfg.model.learner)
    arch, _ = read_qwen3_config(cfg.model.learner)
    try:
        check_parallel_sizes(
            cfg.learner.parallel,
            cfg.ranks,
            num_layers=arch.num_hidden_layers,
            num_heads=arch.num_attention_heads,
            num_query_groups=arch.num_key_value_heads,
        )
    except ValueError as e:
        raise ConfigError(f"learner.parallel / ranks: {e}") from e
    for pool in ("explorer", "learner"):
        try:
            _ = getattr(cfg.rollout, pool).engine.api_key  # the variable it names must be set
        except ValueError as e:
            raise ConfigError(f"rollout.{pool}.engine.{e}") from e
    colocate_errors = colocate_config_errors(cfg.rollout, sync_transport=cfg.sync.transport)
    if colocate_errors:
        raise ConfigError("; ".join(colocate_errors))
    check_layout(cfg, os.sched_getaffinity(0))
    launched = os.environ.get("WORLD_SIZE")
    if launched is not None and int(launched) != cfg.ranks:
        raise ConfigError(f"ranks: the config has {cfg.ranks} learner ranks; the launcher started {launched}")
    import torch

    if torch.cuda.is_available():  # the plan is of GPU memory: a CPU run has no such limit
        check_memory_plan(cfg, torch.cuda.get_device_properties(0).total_memory / 2**30)
    _check_prompt_files(cfg)


def check_layout(cfg: S2LConfig, available: set[int]) -> None:
    """The layout keys against this machine (`available`: the process's affinity mask, which the
    ranks and engines are placed on): every listed core usable, the devices right for
    `rollout.explorer.placement` and `cpu_cores`, and a core left for every engine (the plan the
    driver makes, `placement.plan_engine_cores`)."""
    from megatron_s2l.plan.memory import explorer_pool_is_live
    from megatron_s2l.rollout.placement import cores_outside, placement_errors, plan_engine_cores

    live_explorer = explorer_pool_is_live(cfg)
    errors = cores_outside("learner.cpu_cores", cfg.learner.cpu_cores or (), available)
    errors += placement_errors(cfg.rollout, live_explorer=live_explorer)
    if not errors:
        pools = {
            "learner": cfg.rollout.learner,
            **({"explorer": cfg.rollout.explorer} if live_explorer else {}),
        }
        local = {name: pool for name, pool in pools.items() if not pool.external_urls}
        try:
            plan_engine_cores(local, available, cfg.learner.cpu_cores or ())
        except ValueError as e:
            errors.append(str(e))
    if errors:
        raise ConfigError("; ".join(errors))


def check_memory_plan(cfg: S2LConfig, gpu_mem_gib: float) -> None:
    """Print the run's per-GPU memory plan (`s2l plan`) and refuse a run that does not fit."""
    from megatron_s2l.archs import load_arch
    from megatron_s2l.plan.cli import format_plan
    from megatron_s2l.plan.memory import explorer_pool_is_live, plan_run

    explorer = load_arch(cfg.model.explorer) if explorer_pool_is_live(cfg) else None
    plan = plan_run(cfg, load_arch(cfg.model.learner), explorer, gpu_mem_gib)
    print(format_plan(plan, []), flush=True)
    if not plan.fits:
        raise ConfigError("the run does not fit in GPU memory (s2l plan):\n" + "\n".join(plan.reasons))


def _check_prompt_files(cfg: S2LConfig) -> None:
    """Read every prompt row as the driver will (a bad row anywhere, or a data_source without a
    reward function, names its file and row), and check that a step's prompts are there."""
    from transformers import AutoTokenizer

    from megatron_s2l.data import load_prompt_dataset
    from megatron_s2l.reward import check_data_source

    tokenizer = AutoTokenizer.from_pretrained(cfg.model.learner)
    for key in ("train_files", "eval_files"):
        files = getattr(cfg.data, key)
        if not files:
            continue
        try:
            prompts = load_prompt_dataset(files, tokenizer, cfg.data, check_source=check_data_source)
        except ValueError as e:
            raise ConfigError(f"data.{key}: {e}") from e
        if key == "train_files" and len(prompts) < cfg.schedule.prompts_per_step:
            raise ConfigError(
                f"schedule.prompts_per_step ({cfg.schedule.prompts_per_step}) exceeds the {len(prompts)} "
                f"training prompts left after deduplication and data.max_prompt_tokens"
            )


def _train_rank(cfg_dict: dict, run_root: str, resume: bool) -> None:
    from megatron_s2l.train import train

    train(build(S2LConfig, cfg_dict), RunDir(Path(run_root)), resume=resume)


def run_training(cfg: S2LConfig, run: RunDir, *, resume: bool) -> None:
    """Run `train` on `cfg.ranks` ranks (or as this torchrun rank)."""
    if "RANK" in os.environ:
        from megatron_s2l.train import train

        configure_logging(int(os.environ["RANK"]))
        train(cfg, run, resume=resume)
        return
    from megatron_s2l.learner.parallel import spawn_local_ranks

    with forwarding_sigterm_to_children():  # the ranks stop at a step boundary, then return here
        spawn_local_ranks(_train_rank, cfg.ranks, to_dict(cfg), str(run.root), resume)


def prepare_run_dir(cfg: S2LConfig, run: RunDir, *, resume: bool) -> None:
    """Create (or, resuming, check) the run directory: the config it runs with and the fingerprint
    of the learner's base checkpoint, which a resume must find unchanged (the KL loss's reference
    policy and the tokenizer are rebuilt from it)."""
    from megatron_s2l.learner.hf_loader import checkpoint_fingerprint

    if not resume and run.metrics_file.exists():
        raise ConfigError(f"logging.run_dir: {run.root} already holds a run; resume it or pick another name")
    fingerprint = checkpoint_fingerprint(cfg.model.learner)
    recorded = run.base_fingerprint
    if resume and recorded.is_file() and recorded.read_text().strip() != fingerprint:
        raise ConfigError(
            f"model.learner: {cfg.model.learner} is not the base checkpoint {run.root} started from "
            f"(its fingerprint changed; see {recorded}): the reference policy and the tokenizer come "
            "from it. Restore that checkpoint, or start a new run."
        )
    run.root.mkdir(parents=True, exist_ok=True)
    recorded.write_text(fingerprint + "\n")
    run.config_file.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


RESUME_FIXED_KEYS = ("name", "logging.run_dir")
"""Keys a resume cannot override: the run directory is the one given to --resume."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML run config (yaml/*.yaml)")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue the run in RUN_DIR")
    parser.add_argument(
        "--check-only",
        action="store_true",
        help="run every pre-flight check (paths, models, tokenizers, prompt rows, parallel sizes) and "
        "exit: 0 when the run could start, 2 naming each problem; creates nothing",
    )
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")


def run(args: argparse.Namespace) -> int:
    if (args.config is None) == (args.resume is None):
        raise ConfigError("give exactly one of --config YAML or --resume RUN_DIR")
    resume = args.resume is not None
    if resume:
        run_dir = RunDir(args.resume)
        if not run_dir.config_file.is_file():
            raise ConfigError(f"--resume {args.resume}: no run there ({run_dir.config_file} is missing)")
        fixed = [o for o in args.overrides if o.split("=", 1)[0] in RESUME_FIXED_KEYS]
        if fixed:
            raise ConfigError(
                f"--resume: {', '.join(fixed)}: a resumed run stays in {args.resume} under its name; "
                "move the directory to move the run"
            )
    cfg = load_config(args.config or run_dir.config_file, args.overrides)
    if not resume:
        run_dir = RunDir.for_config(cfg)
    preflight(cfg)
    if args.check_only:
        print(f"s2l train --check-only: {args.config or run_dir.config_file}: every pre-flight check passed")
        return 0
    prepare_run_dir(cfg, run_dir, resume=resume)
    try:
        run_training(cfg, run_dir, resume=resume)
    except Exception:
        traceback.print_exc()
        print(f"s2l train: the run failed; its state is in {run_dir.root}", file=sys.stderr)
        return 1
    step = stopped_at(run_dir, cfg.schedule.steps)
    if step is not None:  # only SIGTERM ends a run early without an error
        print(f"s2l train: stopped after step {step} (SIGTERM); continue: s2l train --resume {run_dir.root}")
        return STOPPED_EXIT_CODE
    print(f"run finished: {run_dir.root}")
    return 0
