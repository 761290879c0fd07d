"""Logging for the `s2l` command and every rank it starts: one format, rank-tagged, and the known
third-party warnings filtered by message (they describe expected fallbacks, not problems).

Call `configure_logging()` first thing in every entry point (the CLI, each spawned rank, each
worker that builds a model), as torchtitan's `init_logger()`: an unconfigured logger drops every
`logger.info`.
"""

from __future__ import annotations

import logging
import warnings

KNOWN_WARNINGS = (
    # megatron-core without Transformer Engine / Apex (always on CPU): the local implementations run.
    r"Transformer Engine and Apex are not installed",
    r"Apex is not installed",
    # megatron-core 0.16.1 warns about its own default cuda_graph_scope.
    r"full scope is deprecated",
)
QUIET_LOGGERS = ("megatron", "urllib3", "filelock", "httpx", "torch.distributed")
"""Third-party loggers kept at WARNING: their INFO lines are per-call chatter."""


def configure_logging(rank: int | None = None, level: int = logging.INFO) -> None:
    """Configure the root logger (replacing any earlier set-up) and filter the known warnings. Ranks
    other than 0 log warnings and errors only, so the driver's lines are not repeated per rank."""
    tag = "" if rank is None else f" [rank {rank}]"
    logging.basicConfig(
        level=level if not rank else logging.WARNING,
        format=f"%(asctime)s{tag} %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
