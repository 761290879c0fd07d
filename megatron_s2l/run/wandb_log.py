"""Weights & Biases mirror of a run's metrics (`logging.wandb`, off by default): the same records as
`metrics.jsonl`, plus the resolved config. `offline` writes everything under the run directory
(`<run>/wandb/offline-run-*`; `wandb sync <that directory>` uploads it later); `online` streams to
the W&B server (credentials as W&B reads them: `wandb login` or WANDB_API_KEY, never in the config).

`wandb` is an optional dependency (`pip install megatron-s2l[wandb]`); a run that asks for it
without the package installed stops at pre-flight (`s2l train --check-only`), naming the key.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

WandbMode = Literal["off", "offline", "online"]


@dataclass(kw_only=True, slots=True)
class WandbConfig:
    mode: WandbMode = "off"
    """`off`; `offline`: W&B files under the run directory only, nothing leaves the machine;
    `online`: also sent to the W&B server."""
    project: str = "megatron-s2l"
    """W&B project."""
    run_name: str = ""
    """W&B run name; empty: the config's `name`."""
    entity: str = ""
    """W&B entity (user or team); empty: W&B's default for the credentials."""

    def __post_init__(self) -> None:
        if self.mode not in ("off", "offline", "online"):
            raise ValueError(f"mode must be 'off', 'offline' or 'online', got {self.mode!r}")
        if self.mode != "off" and not self.project:
            raise ValueError("project must be set when mode is not 'off'")


def wandb_problems(cfg: WandbConfig) -> list[str]:
    """Pre-flight: why `cfg` cannot run here (the package is missing), one line each; [] if it can."""
    if cfg.mode != "off" and importlib.util.find_spec("wandb") is None:
        return [
            f"logging.wandb.mode: {cfg.mode!r} needs the `wandb` package, which is not installed "
            "(pip install 'megatron-s2l[wandb]', or set logging.wandb.mode off)"
        ]
    return []


class WandbMirror:
    """One W&B run that receives every step's finite scalar metrics."""

    def __init__(self, cfg: WandbConfig, *, run_root: Path, run_name: str, config: dict[str, Any]) -> None:
        import wandb

        self._run = wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            name=cfg.run_name or run_name,
            mode=cfg.mode,
            dir=str(run_root),  # W&B writes <run_root>/wandb/...
            config=config,
        )

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        scalars = {
            key: value
            for key, value in metrics.items()
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        }
        self._run.log(scalars, step=step)

    def close(self) -> None:
        import wandb

        self._run.finish()
        # NOTE: with wandb 0.31.0, `finish` can return while wandb-core still holds the offline run
        # file's records (seen: a file of only its 7-byte header); stopping the service flushes them,
        # so the run directory is complete when the logger closes (the run is over by then).
        wandb.teardown()
