"""The rollout section of the run config: how each engine starts, the two engine pools, how each
source is sampled, and the client's limits. Only dataclasses: importing the run config needs none of
the HTTP or SGLang packages."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Literal

from megatron_s2l.rollout.placement import core_list_errors
from megatron_s2l.rollout.sampling_params import SamplingConfig, default_explorer_sampling

RESERVED_SERVER_FLAGS = ("--host", "--port", "--api-key", "--admin-api-key", "--config")
"""`sglang.launch_server` flags this package sets itself: the bind address (loopback unless a key
guards it), the port the trainer checks, the API key (passed in a private file) and that file."""


def reserved_flag_errors(args: list[str], field_name: str) -> list[str]:
    """Why `args` (extra server flags) may not be passed: each flag that would override one of
    `RESERVED_SERVER_FLAGS` (`--host x`, `--host=x`, or an abbreviation argparse would expand)."""
    errors = []
    for arg in args:
        name = arg.split("=", 1)[0]
        if len(name) > 2 and name.startswith("--"):
            hit = next((flag for flag in RESERVED_SERVER_FLAGS if flag.startswith(name)), None)
            if hit is not None:
                errors.append(
                    f"{field_name}: {arg!r} would override {hit}, which is set from the config "
                    "(host, port, api_key_env) and checked; set it there instead"
                )
    return errors


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def api_key_from_env(var: str) -> str:
    """The engines' API key in environment variable `var`. Refused: unset or empty, and a key that
    starts with '-': SGLang turns its config file into the arguments `--api-key VALUE`
    (sglang/srt/utils/server_args_config_parser.py, `_add_scalar_arg`), and argparse takes such a
    value for a flag, so the server would exit at start-up."""
    key = os.environ.get(var)
    if not key:
        raise ValueError(f"api_key_env: the environment variable {var} is unset or empty")
    if key.startswith("-"):
        raise ValueError(
            f"api_key_env: the key in {var} starts with '-', which SGLang's argument parser reads as a "
            "flag; use a key that does not"
        )
    return key


@dataclass(kw_only=True, slots=True)
class EngineConfig:
    """How to start one SGLang server (the model path is given separately)."""

    host: str = "127.0.0.1"
    """Address the server binds to; loopback unless the engines run on other hosts."""
    port: int = 0
    """HTTP port; 0 picks a free one. With several servers, server i takes port + i."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto` is cuda when this process sees a GPU, else cpu (with the CPU flags and stand-ins)."""
    tp: int = 1
    """Tensor-parallel size of the server."""
    dtype: str = "auto"
    """SGLang `--dtype`; `auto` means float32 on CPU (SGLang would pick a half dtype there)."""
    mem_fraction_static: float | None = None
    """`--mem-fraction-static`; None is SGLang's default on GPU and 0.5 on CPU (where the KV cache is
    sized by `max_total_tokens`)."""
    max_total_tokens: int | None = None
    """`--max-total-tokens` (KV cache size in tokens); None is SGLang's default, 8192 on CPU."""
    context_length: int | None = None
    """`--context-length`; None takes the model's."""
    max_running_requests: int | None = None
    """`--max-running-requests`; None is SGLang's default, 32 on CPU."""
    api_key_env: str = ""
    """Name of the environment variable that holds the engines' API key (SGLang `--api-key`; the
    client and the weight sync send it as a bearer token). Required when `host` is not a loopback
    address; without one, the engines a run starts get a random key of that run. A key starting with
    '-' is refused (SGLang's argument parser reads it as a flag). The key itself never enters the
    config file, a command line, the logs or the metrics."""
    sleep_on_idle: bool = True
    """`--sleep-on-idle`: an idle scheduler otherwise keeps a core busy."""
    extra_args: list[str] = field(default_factory=list)
    """More `sglang.launch_server` flags, passed verbatim; none of `--host`, `--port`, `--api-key`,
    `--admin-api-key`, `--config` (set from this section, and checked)."""
    server_site_dirs: list[str] = field(default_factory=list)
    """Extra directories put on the server's PYTHONPATH; on CPU `.venv/sglang-cpu-site` is added."""
    startup_timeout_s: float = 300.0
    """Seconds to wait for /health after launch before failing (with the log's tail)."""
    stop_timeout_s: float = 20.0
    """Seconds between SIGTERM and SIGKILL of the server's process group."""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.tp < 1:
            raise ValueError(f"tp must be >= 1, got {self.tp}")
        if self.mem_fraction_static is not None and not 0 < self.mem_fraction_static <= 1:
            raise ValueError(f"mem_fraction_static must be in (0, 1], got {self.mem_fraction_static}")
        for name in ("max_total_tokens", "context_length", "max_running_requests"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 or null, got {value}")
        if self.startup_timeout_s <= 0:
            raise ValueError(f"startup_timeout_s must be > 0, got {self.startup_timeout_s}")
        if self.stop_timeout_s <= 0:
            raise ValueError(f"stop_timeout_s must be > 0, got {self.stop_timeout_s}")
        errors = reserved_flag_errors(self.extra_args, "extra_args")
        if errors:
            raise ValueError("; ".join(errors))
        if not is_loopback(self.host) and not self.api_key_env:
            raise ValueError(
                f"host {self.host!r} is not a loopback address: set api_key_env to the name of an "
                "environment variable holding an API key (an engine open to the network without one "
                "generates and loads weights for anyone who reaches it)"
            )

    @property
    def api_key(self) -> str | None:
        """The API key from `api_key_env` (None without one); see `api_key_from_env`."""
        return api_key_from_env(self.api_key_env) if self.api_key_env else None

    def resolved_device(self) -> Literal["cpu", "cuda"]:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass(kw_only=True, slots=True)
class EnginePoolConfig:
    """The servers of one pool."""

    num_engines: int = 1
    """How many servers (each of `engine.tp` devices) serve this model."""
    engine: EngineConfig = field(default_factory=EngineConfig)
    """How each server is started (ports are picked per server when `engine.port` is 0)."""
    use_router: bool = False
    """Also start an `sglang-router` in front of the servers (for external clients; the trainer's
    client spreads requests itself so that it can re-send a dead server's requests)."""
    on_failure: Literal["restart", "drop"] = "restart"
    """`restart` a dead server, or `drop` it while other servers remain (restart the last one); a
    server of `external_urls` is waited for instead of restarted (up to engine.startup_timeout_s)."""
    external_urls: list[str] = field(default_factory=list)
    """Servers started elsewhere (`s2l serve` on other nodes: see `s2l launch`) to use instead of
    starting `num_engines` here: each must answer /health and serve this pool's model (same
    directory name) at `engine.tp`. Learner servers get the learner's weights before the first step."""
    placement: Literal["dedicated", "shared"] = "dedicated"
    """The explorer pool only. `dedicated`: its engines get devices of their own (GPUs after the
    learner engines', or cores of their own on CPU). `shared`: they run on the learner engines'
    devices, so that whichever pool has work uses the compute: on GPU explorer engine i on GPUs of
    learner engine i mod N (its TP must divide the learner's; both pools' `engine.mem_fraction_static`
    set, the explorer's a fraction of the memory the learner engines leave, as they start first: `s2l
    plan` prints the values to set), on CPU on the learner engines' cores with
    `OMP_WAIT_POLICY=PASSIVE` in both pools' servers. After T_mix the explorer's engines are stopped
    and none replaces them. Needs both pools started here (no `external_urls`), no `rollout.colocate`."""
    cpu_cores: list[int] | None = None
    """CPU engines: the cores this pool's engines run on (split evenly among them); None: the cores
    that `learner.cpu_cores` and the other pool's list leave (shared with the other unset pool; a
    shared explorer takes the learner engines'). Each must be in the trainer's CPU affinity and in no
    other list (a shared explorer's must lie within the learner engines' cores). An error on a GPU
    pool (its servers run on the cores the lists leave) and with `external_urls`."""

    def __post_init__(self) -> None:
        if self.num_engines < 1:
            raise ValueError(f"num_engines must be >= 1, got {self.num_engines}")
        if self.on_failure not in ("restart", "drop"):
            raise ValueError(f"on_failure must be 'restart' or 'drop', got {self.on_failure!r}")
        for url in self.external_urls:
            if not re.fullmatch(r"https?://[^/\s:]+(:\d+)?/?", url):
                raise ValueError(f"external_urls: {url!r} is not an http(s)://host[:port] URL")
        if self.external_urls:
            if self.num_engines not in (1, len(self.external_urls)):
                raise ValueError(
                    f"num_engines ({self.num_engines}) disagrees with the {len(self.external_urls)} "
                    "external_urls (leave it at 1: the URLs say how many servers there are)"
                )
            if self.use_router:
                raise ValueError("use_router starts a router here: it cannot front external_urls")
            self.num_engines = len(self.external_urls)
        if self.placement not in ("dedicated", "shared"):
            raise ValueError(f"placement must be 'dedicated' or 'shared', got {self.placement!r}")
        errors = core_list_errors(self.cpu_cores)
        if errors:
            raise ValueError("; ".join(errors))
        if self.cpu_cores is not None and self.external_urls:
            raise ValueError(
                "cpu_cores places the engines started here; those of external_urls run elsewhere"
            )


@dataclass(kw_only=True, slots=True)
class ClientConfig:
    """Request shaping and failure tolerance of the rollout client."""

    max_concurrency: int = 8
    """HTTP requests in flight per pool at once."""
    batch_size: int = 8
    """Samples per `/generate` request."""
    request_timeout_s: float = 600.0
    """A request not answered within this is treated as failed (server hung) and re-sent."""
    max_retries: int = 3
    """Re-sends of one batch before the call fails."""

    def __post_init__(self) -> None:
        for name in ("max_concurrency", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"request_timeout_s must be > 0, got {self.request_timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")


@dataclass(kw_only=True, slots=True)
class RolloutConfig:
    """Explorer and learner engine pools, how each is sampled, and the client's limits."""

    explorer: EnginePoolConfig = field(default_factory=EnginePoolConfig)
    """The frozen explorer's servers (never receive weights)."""
    learner: EnginePoolConfig = field(default_factory=EnginePoolConfig)
    """The learner's servers (receive weights after every optimizer step)."""
    explorer_sampling: SamplingConfig = field(default_factory=default_explorer_sampling)
    """The authors sampled the explorer at temperature 0.7, top_p 0.95."""
    learner_sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """On-policy GRPO samples the learner at temperature 1."""
    client: ClientConfig = field(default_factory=ClientConfig)
    """Batching, concurrency, time-outs and retries of requests to either pool."""
    explorer_cache_path: str | None = None
    """JSONL of pre-generated explorer samples (tools/fill_explorer_cache.py); None samples live."""
    explorer_cache_draw: Literal["once", "per-use"] = "once"
    """How a use of a prompt takes its k explorer samples from the n cached for it. `once`: each
    cached sample serves at most once in the run (a prompt's draws never repeat a sample, so the
    cache stands for live sampling; it must hold every sample the run will use). `per-use`: every use
    draws k of the n afresh (distinct within the use, independent across uses, so samples recur), as
    the S2L-PO authors' released runs did (`random.sample` of k per prompt in their
    verl/utils/dataset/offline_rollout_dataset.py); the cache must then hold at least
    `schedule.group_size` samples of every prompt, checked when it loads."""
    explorer_train_max_new_tokens: int | None = None
    """Cut explorer responses to this many tokens for training (a cut response counts as finished by
    `length`); `explorer_sampling.max_new_tokens` is then the generation budget, live and in
    tools/fill_explorer_cache.py, and may be larger. The released runs generated up to 30,000 tokens
    and trained on 4,096 (`reward.explorer_full_response` scores the uncut text, as they did).
    None: no cut (the explorer's samples are trained on as generated)."""
    prefetch_explorer: bool = True
    """Generate the next step's explorer samples while this step trains and syncs (the explorer is
    frozen: same samples, same seeds, at most one step ahead)."""
    explorer_hand_over: bool = True
    """After the last step with explorer samples (step T_mix - 1; step 1 when T_mix = 1), the
    explorer's resources go to the learner: the explorer engines this run started are stopped and as
    many learner engines (the learner pool's engine config) start on their CPU cores, or on their
    GPUs as many as those hold at the learner's TP, synced to the learner's weights before the next
    rollout (none with `colocate`: those GPUs stay free); attached explorer servers
    (`explorer.external_urls`) are asked to release their memory and get no more requests. A run
    resumed after that step starts in this layout. Nothing to hand over with `explorer_cache_path`.
    False: the explorer engines run (idle) to the end of the run."""
    overlap: Literal[0, 1] = 0
    """1: generate the next step's rollout (explorer and learner samples) while this step trains,
    from the weights the learner engines hold (those before this step's update), so that learner
    samples are one step stale; the trainer waits for it before the weight sync (which never runs
    into a generating engine) and before evaluation. `algo.rollout_correction: tis` corrects for the
    staleness. Only with `schedule.mode: combined`, without `algo.dynamic_sampling` and without
    `colocate`. 0: each step samples from the weights of the step before (on-policy, the default).
    Supersedes `prefetch_explorer` (the explorer's samples are part of the early rollout)."""
    log_dir: str | None = None
    """Where each server's log file goes; None: the run directory's `engine-logs/`."""
    colocate: bool = False
    """Run the learner engines on the learner ranks' own GPUs (engines of TP t take t of them), as
    the paper's authors did on one 8-GPU node: they start with SGLang's memory saver, release their
    KV cache and weights after each rollout, take the weights back before the weight sync and the KV
    cache after it (docs/rollout.md, "Colocated mode"). The explorer is never colocated: it gets GPUs
    of its own beside the learner's (an error when none are left: use `explorer_cache_path` or
    `explorer.external_urls`). GPU only; needs `sync.transport` tensor or disk."""

    def __post_init__(self) -> None:
        limit, budget = self.explorer_train_max_new_tokens, self.explorer_sampling.max_new_tokens
        if limit is not None and limit < 1:
            raise ValueError(f"explorer_train_max_new_tokens must be >= 1 or null, got {limit}")
        if limit is not None and budget < limit:
            raise ValueError(
                f"explorer_sampling.max_new_tokens ({budget}) is the explorer's generation budget and is "
                f"smaller than explorer_train_max_new_tokens ({limit}), the length explorer responses "
                "are cut to for training: raise the budget (the released runs generated 30,000) or "
                "lower the cut"
            )
        if self.explorer_cache_draw not in ("once", "per-use"):
            raise ValueError(
                f"explorer_cache_draw must be 'once' or 'per-use', got {self.explorer_cache_draw!r}"
            )
        if self.colocate and self.overlap:
            raise ValueError(
                "colocate true with overlap 1: colocated learner engines hand their GPU memory to the "
                "learner while it trains, so they cannot generate the next rollout then"
            )
        if self.colocate and self.learner.external_urls:
            raise ValueError(
                "colocate: the learner engines must be started here, on the learner's GPUs; "
                "rollout.learner.external_urls attaches servers started elsewhere"
            )
        self._validate_placement()

    def _validate_placement(self) -> None:
        if self.learner.placement != "dedicated":
            raise ValueError(
                "rollout.learner.placement: only the explorer's engines can be shared (run on the learner "
                "engines' devices); the learner pool stays dedicated"
            )
        if self.explorer.placement != "shared":
            return
        if self.colocate:
            raise ValueError(
                "rollout.explorer.placement shared with rollout.colocate: the explorer is never colocated "
                "(colocated learner engines release their GPU memory to the learner while it trains)"
            )
        for name in ("explorer", "learner"):
            if getattr(self, name).external_urls:
                raise ValueError(
                    f"rollout.explorer.placement shared: rollout.{name}.external_urls attaches servers "
                    "started elsewhere; sharing places the explorer's engines on the learner engines "
                    "started here"
                )
