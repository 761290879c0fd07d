"""Where every process of a multi-node run goes: pure arithmetic on the run config, no I/O.

Layout rules (docs/deploy.md walks through them):
- The learner takes the first L = ceil(ranks / G) hosts (G GPUs per node), under one torchrun per
  node with the same number of ranks on each (torchrun's rule): more than one node needs ranks to be
  a multiple of G. Megatron puts TP groups on consecutive ranks, so a TP group stays inside a node
  when TP divides G.
- The engine pools follow on the next hosts. Each engine takes `engine.tp` GPUs of one node (an
  engine never spans nodes); engines are packed first-fit, widest TP first (the learner pool first
  on a tie), so a node holds one pool's engines on consecutive GPUs and consecutive ports. Each
  node and pool gets one `s2l serve`, whose engine i binds `--port` + i on the i-th block of `--tp`
  GPUs of `--gpus`.
- The trainer attaches to those engines through `rollout.<pool>.external_urls`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from megatron_s2l.rollout.config import is_loopback

if TYPE_CHECKING:
    from megatron_s2l.config import S2LConfig
    from megatron_s2l.rollout.config import EnginePoolConfig

Pool = Literal["learner", "explorer"]
POOLS: tuple[Pool, ...] = ("learner", "explorer")
DEFAULT_API_KEY_ENV = "S2L_ENGINE_API_KEY"
"""The variable engines open to the network read their API key from when the config names none."""
ROUTER_TIMEOUT_S = 14_400
"""sglang-router's default request time-out (1,800 s) kills long generations; slime uses 14,400."""


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """What the cluster adds to the run config: hosts, GPUs per node, ports."""

    hosts: tuple[str, ...]
    gpus_per_node: int = 8
    rdzv_port: int = 29500
    """Port of torchrun's c10d rendezvous on the first host."""
    engine_port: int = 30000
    """First engine port on every engine node; the node's engines take the next ones."""
    control_port: int = 29600
    """Port of each engine node's shutdown endpoint, which the learner node calls when training ends."""
    stop_timeout_s: int = 900
    """After SIGTERM: the trainer's time to finish its step and checkpoint (torchrun --shutdown-timeout)."""
    api_key_env: str = DEFAULT_API_KEY_ENV
    """Used (and passed to the trainer) for a pool whose `engine.api_key_env` is empty."""


@dataclass(frozen=True, slots=True)
class Engine:
    """One SGLang server: its pool, its index in the pool, and where it runs."""

    pool: Pool
    index: int
    node: int
    host: str
    gpus: tuple[int, ...]
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ServeGroup:
    """The engines of one pool on one node: one `s2l serve` command."""

    pool: Pool
    node: int
    model: str
    tp: int
    engines: tuple[Engine, ...]
    argv: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class NodePlan:
    """What one host runs: torchrun (a learner node) or `s2l serve` per pool (an engine node)."""

    rank: int
    host: str
    role: Literal["learner", "engines"]
    gpus: tuple[int, ...]
    """GPUs of this node the plan uses (learner ranks or engines)."""
    commands: tuple[tuple[str, ...], ...]
    parts: tuple[str, ...]
    """What runs here, one line per torchrun or pool (the yaml/ headers quote them)."""

    @property
    def summary(self) -> str:
        return "; ".join(self.parts)


@dataclass(frozen=True, slots=True)
class LaunchPlan:
    """Every node's commands and the engines the trainer attaches to."""

    options: LaunchOptions
    learner_nodes: int
    nproc_per_node: int
    engines: tuple[Engine, ...]
    serve_groups: tuple[ServeGroup, ...]
    nodes: tuple[NodePlan, ...]
    train_overrides: tuple[str, ...]
    """What launch adds to the trainer's command line (URLs, API key variables)."""
    api_key_envs: dict[str, str] = field(default_factory=dict)
    """pool -> the environment variable holding its engines' API key."""
    notes: tuple[str, ...] = ()

    def urls(self, pool: Pool) -> list[str]:
        return [e.url for e in self.engines if e.pool == pool]


def learner_nodes(ranks: int, tp: int, gpus_per_node: int) -> tuple[int, int]:
    """(nodes, ranks per node) of the learner; ValueError when torchrun or TP cannot be laid out."""
    if gpus_per_node < 1:
        raise ValueError(f"--gpus-per-node must be >= 1, got {gpus_per_node}")
    if tp > gpus_per_node:
        raise ValueError(
            f"learner.parallel.tensor_parallel ({tp}) is larger than a node ({gpus_per_node} GPUs): "
            "TP must stay inside a node (use pipeline_parallel across nodes)"
        )
    if ranks <= gpus_per_node:
        return 1, ranks
    if ranks % gpus_per_node:
        raise ValueError(
            f"ranks ({ranks}) must be a multiple of --gpus-per-node ({gpus_per_node}) when the learner "
            "spans nodes: torchrun starts the same number of ranks on every node"
        )
    if gpus_per_node % tp:
        raise ValueError(
            f"learner.parallel.tensor_parallel ({tp}) does not divide --gpus-per-node ({gpus_per_node}): "
            "a TP group would straddle two nodes"
        )
    return ranks // gpus_per_node, gpus_per_node


def live_pools(cfg: S2LConfig) -> list[Pool]:
    """The pools the run samples: the explorer's only with t_mix > 0 and no explorer cache (as the
    driver decides; see plan.memory.explorer_pool_is_live)."""
    explorer_live = cfg.schedule.t_mix > 0 and cfg.rollout.explorer_cache_path is None
    return ["learner", "explorer"] if explorer_live else ["learner"]


Placed = tuple[Pool, int, int, tuple[int, ...]]
"""(pool, index in the pool, engine node counted from 0, GPUs) of one engine."""


def pack_engines(sizes: dict[Pool, tuple[int, int]], gpus_per_node: int) -> list[Placed]:
    """First-fit, widest TP first (`sizes`: pool -> (num_engines, tp)); fewest nodes when every TP
    is a power of two dividing the node."""
    for pool, (_, tp) in sizes.items():
        if tp > gpus_per_node:
            raise ValueError(
                f"rollout.{pool}.engine.tp ({tp}) is larger than a node ({gpus_per_node} GPUs): "
                "an engine never spans nodes"
            )
    order = sorted(sizes, key=lambda p: (-sizes[p][1], POOLS.index(p)))
    free: list[list[int]] = []  # per engine node, its free GPUs in order
    placed: list[Placed] = []
    for pool in order:
        count, tp = sizes[pool]
        for index in range(count):
            node = next((n for n, gpus in enumerate(free) if len(gpus) >= tp), None)
            if node is None:
                free.append(list(range(gpus_per_node)))
                node = len(free) - 1
            gpus, free[node] = tuple(free[node][:tp]), free[node][tp:]
            placed.append((pool, index, node, gpus))
    return placed


def external_urls_override(pool: Pool, urls: list[str]) -> str:
    """`rollout.<pool>.external_urls=[...]` as configio's overrides read it (a YAML value: JSON
    strings, since a bare `http://h:1` inside a YAML flow list would split at its colons)."""
    return f"rollout.{pool}.external_urls={json.dumps(urls, separators=(',', ':'))}"


def serve_argv(cfg: S2LConfig, pool: Pool, engines: list[Engine], api_key_env: str) -> tuple[str, ...]:
    """`s2l serve` for one pool's engines on one node, with the engine settings of the config."""
    pool_cfg: EnginePoolConfig = getattr(cfg.rollout, pool)
    engine = pool_cfg.engine
    model = cfg.model.learner if pool == "learner" else cfg.model.explorer
    gpus = [g for e in engines for g in e.gpus]
    argv = ["s2l", "serve", "--model", model, "--num-engines", str(len(engines)), "--tp", str(engine.tp)]
    argv += ["--host", "0.0.0.0", "--port", str(engines[0].port), "--api-key-env", api_key_env]
    argv += ["--gpus", ",".join(map(str, gpus))]
    if engine.device != "auto":
        argv += ["--device", engine.device]
    if engine.dtype != "auto":
        argv += ["--dtype", engine.dtype]
    for flag, value in (
        ("--mem-fraction-static", engine.mem_fraction_static),
        ("--max-total-tokens", engine.max_total_tokens),
        ("--context-length", engine.context_length),
    ):
        if value is not None:
            argv += [flag, str(value)]
    argv += ["--log-dir", f"logs/serve/{cfg.name}-{pool}"]
    extra = list(engine.extra_args)
    if engine.max_running_requests is not None:
        extra = ["--max-running-requests", str(engine.max_running_requests), *extra]
    if extra:
        argv += ["--extra", *extra]  # last: --extra takes the rest of the line
    return tuple(argv)


def train_argv(
    plan_nodes: int,
    nproc: int,
    node: int,
    options: LaunchOptions,
    source: tuple[str, str],
    overrides: list[str],
) -> tuple[str, ...]:
    """torchrun of node `node` of the learner (rank assignment: torchrun's c10d rendezvous); `source`:
    ("--config", YAML) or ("--resume", RUN_DIR). On SIGTERM torchrun passes the signal to the ranks
    and kills them `--shutdown-timeout` seconds later (30 s by default: too short for a step)."""
    return (
        "torchrun",
        "--nnodes",
        str(plan_nodes),
        "--node-rank",
        str(node),
        "--nproc-per-node",
        str(nproc),
        "--rdzv-backend",
        "c10d",
        "--rdzv-endpoint",
        f"{options.hosts[0]}:{options.rdzv_port}",
        "--shutdown-timeout",
        str(options.stop_timeout_s),
        "-m",
        "megatron_s2l.cli",
        "train",
        *source,
        *overrides,
    )


def _span(values: list[int] | tuple[int, ...]) -> str:
    """`0-5` for a consecutive run, else `0,2,4`."""
    if not values:
        return "-"
    if list(values) == list(range(values[0], values[-1] + 1)) and len(values) > 1:
        return f"{values[0]}-{values[-1]}"
    return ",".join(map(str, values))


def _check_options(cfg: S2LConfig, options: LaunchOptions, overrides: list[str]) -> None:
    if not options.hosts or any(not h for h in options.hosts):
        raise ValueError("--hosts: give the nodes' host names, comma-separated (H0,H1,...)")
    if len(set(options.hosts)) != len(options.hosts):
        raise ValueError(f"--hosts: a host is named twice: {','.join(options.hosts)}")
    for key in overrides:
        if key.split("=", 1)[0].endswith(".external_urls"):
            raise ValueError(f"{key.split('=', 1)[0]}: s2l launch sets the engines' URLs itself")
    if cfg.rollout.explorer.placement == "shared":
        raise ValueError(
            "rollout.explorer.placement: shared puts the explorer's engines on the devices of learner "
            "engines the trainer starts; s2l launch starts every engine on an engine node (set dedicated)"
        )
    if cfg.sync.transport == "tensor":
        raise ValueError(
            "sync.transport: `tensor` needs the engines beside the learner; engines on other nodes take "
            "`distributed` (or `disk` on a shared file system)"
        )


def plan_launch(
    cfg: S2LConfig,
    config_path: str,
    overrides: list[str],
    options: LaunchOptions,
    resume_dir: str | None = None,
) -> LaunchPlan:
    """The whole layout: learner nodes, engine nodes, each node's commands, the trainer's URLs
    (`cfg` read from `config_path`; with `resume_dir` the trainer continues that run instead).
    Raises ValueError naming the key or flag when the config cannot be laid out on the hosts."""
    _check_options(cfg, options, overrides)
    n_learner, nproc = learner_nodes(cfg.ranks, cfg.learner.parallel.tensor_parallel, options.gpus_per_node)
    pools = live_pools(cfg)
    sizes = {p: (getattr(cfg.rollout, p).num_engines, getattr(cfg.rollout, p).engine.tp) for p in pools}
    placed = pack_engines(sizes, options.gpus_per_node)
    n_engine = 1 + max(node for _, _, node, _ in placed)
    if len(options.hosts) != n_learner + n_engine:
        wanted = " + ".join(f"{sizes[p][0]} {p} x TP {sizes[p][1]}" for p in pools)
        raise ValueError(
            f"--hosts: this layout needs {n_learner + n_engine} hosts of {options.gpus_per_node} GPUs "
            f"({n_learner} for the learner's {cfg.ranks} ranks, {n_engine} for the engines: {wanted}); "
            f"{len(options.hosts)} given"
        )
    engines = _assign_ports(placed, n_learner, options)
    api_key_envs = {p: getattr(cfg.rollout, p).engine.api_key_env or options.api_key_env for p in pools}
    train_overrides = _trainer_overrides(cfg, pools, engines, api_key_envs)
    groups = _serve_groups(cfg, engines, api_key_envs)
    trainer_args = [*overrides, *train_overrides]
    source = ("--resume", resume_dir) if resume_dir else ("--config", config_path)
    nodes = [
        _learner_node(
            cfg,
            node,
            (n_learner, nproc),
            options,
            train_argv(n_learner, nproc, node, options, source, trainer_args),
        )
        for node in range(n_learner)
    ]
    for node in range(n_learner, n_learner + n_engine):
        nodes.append(_engine_node(node, [grp for grp in groups if grp.node == node], options))
    return LaunchPlan(
        options=options,
        learner_nodes=n_learner,
        nproc_per_node=nproc,
        engines=tuple(engines),
        serve_groups=tuple(groups),
        nodes=tuple(nodes),
        train_overrides=tuple(train_overrides),
        api_key_envs=api_key_envs,
        notes=tuple(_notes(cfg, nodes, engines, api_key_envs, options)),
    )


def _assign_ports(placed: list[Placed], n_learner: int, options: LaunchOptions) -> list[Engine]:
    """Ports per engine node in placement order, so a pool's engines on a node get consecutive ones."""
    next_port: dict[int, int] = {}
    engines = []
    for pool, index, node, gpus in placed:
        port = next_port.get(node, options.engine_port)
        next_port[node] = port + 1
        if port > 65535:
            raise ValueError(f"--engine-port {options.engine_port}: the engines' ports run past 65535")
        host_rank = n_learner + node
        engines.append(Engine(pool, index, host_rank, options.hosts[host_rank], gpus, port))
    return engines


def _trainer_overrides(
    cfg: S2LConfig, pools: list[Pool], engines: list[Engine], api_key_envs: dict[str, str]
) -> list[str]:
    """The engines' URLs per pool, the API key variable where the config names none, and no router
    (the trainer starts none in front of servers started elsewhere; the dry-run prints one)."""
    out = [external_urls_override(p, [e.url for e in engines if e.pool == p]) for p in pools]
    out += [
        f"rollout.{p}.engine.api_key_env={api_key_envs[p]}"
        for p in pools
        if not getattr(cfg.rollout, p).engine.api_key_env
    ]
    out += [f"rollout.{p}.use_router=false" for p in pools if getattr(cfg.rollout, p).use_router]
    return out


def _serve_groups(cfg: S2LConfig, engines: list[Engine], api_key_envs: dict[str, str]) -> list[ServeGroup]:
    """One `s2l serve` per engine node and pool."""
    groups = []
    for node in sorted({e.node for e in engines}):
        for pool in POOLS:
            members = [e for e in engines if e.node == node and e.pool == pool]
            if not members:
                continue
            ports = [e.port for e in members]
            assert ports == list(range(ports[0], ports[0] + len(ports))), ports  # serve binds P + i
            model = cfg.model.learner if pool == "learner" else cfg.model.explorer
            argv = serve_argv(cfg, pool, members, api_key_envs[pool])
            tp = getattr(cfg.rollout, pool).engine.tp
            groups.append(ServeGroup(pool, node, model, tp, tuple(members), argv))
    return groups


def _learner_node(
    cfg: S2LConfig, node: int, shape: tuple[int, int], options: LaunchOptions, argv: tuple[str, ...]
) -> NodePlan:
    """`shape`: (learner nodes, ranks per node)."""
    n_learner, nproc = shape
    parallel = cfg.learner.parallel
    part = (
        f"learner: {nproc} of {cfg.ranks} ranks (TP {parallel.tensor_parallel} x PP "
        f"{parallel.pipeline_parallel} x DP {cfg.ranks // _model_parallel(cfg)}): GPUs "
        f"{_span(list(range(nproc)))}, torchrun node {node} of {n_learner}"
    )
    return NodePlan(node, options.hosts[node], "learner", tuple(range(nproc)), (argv,), (part,))


def _engine_node(node: int, groups: list[ServeGroup], options: LaunchOptions) -> NodePlan:
    parts = tuple(
        f"{grp.pool} engine{'s' * (len(grp.engines) > 1)} {_span([e.index for e in grp.engines])} "
        f"(TP {grp.tp}): GPUs {_span([x for e in grp.engines for x in e.gpus])}, "
        f"ports {_span([e.port for e in grp.engines])}"
        for grp in groups
    )
    used = tuple(sorted(x for grp in groups for e in grp.engines for x in e.gpus))
    return NodePlan(node, options.hosts[node], "engines", used, tuple(grp.argv for grp in groups), parts)


def _model_parallel(cfg: S2LConfig) -> int:
    return cfg.learner.parallel.tensor_parallel * cfg.learner.parallel.pipeline_parallel


def _notes(
    cfg: S2LConfig, nodes: list[NodePlan], engines: list[Engine], keys: dict[str, str], options: LaunchOptions
) -> list[str]:
    notes = []
    idle = [
        f"{n.host} GPUs {_span(sorted(set(range(options.gpus_per_node)) - set(n.gpus)))}"
        for n in nodes
        if len(n.gpus) < options.gpus_per_node
    ]
    if idle:
        notes.append(f"idle GPUs: {'; '.join(idle)}")
    variables = sorted(set(keys.values()))
    notes.append(
        f"every node needs {' and '.join(variables)} set to the same secret: the engines listen on "
        "0.0.0.0 and the trainer sends it as a bearer token"
    )
    if cfg.sync.transport == "distributed" and is_loopback(cfg.sync.master_address):
        notes.append(
            f"sync.master_address is {cfg.sync.master_address}: engines on other nodes cannot reach a "
            "loopback address; use `auto` (each sending rank's routable address)"
        )
    if cfg.sync.transport == "disk":
        notes.append("sync.transport disk: sync.disk_dir must be a file system every node mounts")
    explorer_note = _explorer_after_t_mix_note(cfg, engines)
    if explorer_note:
        notes.append(explorer_note)
    for pool in ("learner", "explorer"):
        pool_cfg = getattr(cfg.rollout, pool)
        urls = [e.url for e in engines if e.pool == pool]
        if not pool_cfg.use_router or not urls:
            continue
        notes.append(
            f"{pool} router, for other clients (not started: the trainer spreads its requests over the "
            f"engines itself): python -m sglang_router.launch_router --worker-urls "
            f"{' '.join(urls)} --policy cache_aware --request-timeout-secs {ROUTER_TIMEOUT_S} "
            f"--api-key ${keys[pool]} --host 0.0.0.0 --port <free port>"
            + (" --disable-health-check" if pool == "learner" else "")
        )
    return notes


def _explorer_after_t_mix_note(cfg: S2LConfig, engines: list[Engine]) -> str | None:
    """What happens to the explorer engines' GPUs once no step has explorer samples left."""
    from megatron_s2l.run.hand_over import hands_over, last_explorer_step

    gpus: dict[str, list[int]] = {}
    for engine in engines:
        if engine.pool == "explorer":
            gpus.setdefault(engine.host, []).extend(engine.gpus)
    where = [f"{host} GPUs {_span(sorted(host_gpus))}" for host, host_gpus in gpus.items()]
    if not where or not hands_over(cfg):
        return None
    saver = "--enable-memory-saver" in cfg.rollout.explorer.engine.extra_args
    return (
        f"explorer engines after T_mix: from step {last_explorer_step(cfg.schedule) + 1} on (no explorer "
        f"samples left) the trainer sends the explorer engines ({'; '.join(where)}) no more requests "
        "and asks them to release their memory (POST /release_memory_occupation), "
        + (
            "which frees their GPUs for other work (they run with --enable-memory-saver)"
            if saver
            else "which frees nothing without --enable-memory-saver: stop that `s2l serve` to use "
            "those GPUs for other work"
        )
        + "; the trainer starts no learner engines there (rollout.explorer_hand_over)"
    )


def format_dry_run(plan: LaunchPlan) -> str:
    """What `s2l launch --dry-run` prints: per node, a comment saying what runs there, then the
    exact command line(s) `--node-rank K` runs."""
    import shlex

    o = plan.options
    pools = ", ".join(
        f"{p} {len(plan.urls(p))} x TP {next(g.tp for g in plan.serve_groups if g.pool == p)}"
        for p in POOLS
        if plan.urls(p)
    )
    lines = [
        f"# s2l launch: {len(plan.nodes)} nodes x {o.gpus_per_node} GPUs: learner on {plan.learner_nodes}, "
        f"engines ({pools}) on {len(plan.nodes) - plan.learner_nodes}",
    ]
    for node in plan.nodes:
        lines += [f"# node {node.rank} ({node.host}): {part}" for part in node.parts]
        lines += [shlex.join(argv) for argv in node.commands]
    lines.append(
        "# note: `s2l launch --node-rank K` runs node K's line(s); learner nodes first wait for every "
        "engine's /health (--engine-wait-s)"
    )
    lines.append(
        f"# note: when training ends the learner node calls POST /shutdown on port {o.control_port} of every "
        "engine node (--control-port), which then stops its engines; SIGTERM makes the trainer checkpoint "
        f"after its step and stop within {o.stop_timeout_s} s (--stop-timeout-s), exit status 75"
    )
    lines += [f"# note: {note}" for note in plan.notes]
    return "\n".join(lines)
