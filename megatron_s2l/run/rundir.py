"""`RunDir`: the one owner of a run's paths. Everything a run writes lives under its directory by
default, so a run directory moved elsewhere resumes there whole, and two runs never share a path
(an engine log, the disk transport's weights) that one of them could delete under the other."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from megatron_s2l.config import S2LConfig


@dataclass(frozen=True, slots=True)
class RunDir:
    root: Path

    @classmethod
    def for_config(cls, cfg: S2LConfig) -> RunDir:
        """The directory a new run of `cfg` gets (`logging.run_dir` with the run name filled in)."""
        return cls(Path(cfg.logging.run_dir.format(name=cfg.name)))

    @property
    def config_file(self) -> Path:
        """The resolved config the run started with (what `--resume` reads)."""
        return self.root / "config.yaml"

    @property
    def metrics_file(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def samples(self) -> Path:
        """Decoded rollout and evaluation samples per step (`logging.dump_samples`)."""
        return self.root / "samples"

    @property
    def engine_logs(self) -> Path:
        """Where the engine servers log, unless `rollout.log_dir` says otherwise."""
        return self.root / "engine-logs"

    @property
    def weight_sync(self) -> Path:
        """The disk transport's directory, unless `sync.disk_dir` says otherwise."""
        return self.root / "weight-sync"

    @property
    def status_file(self) -> Path:
        """The step and phase the run is in (`megatron_s2l.run.phases`)."""
        return self.root / "status.json"

    @property
    def base_fingerprint(self) -> Path:
        """The learner's base checkpoint fingerprint, written at the start and checked on resume."""
        return self.root / "learner_base.sha256"

    def resolve(self, cfg: S2LConfig) -> S2LConfig:
        """`cfg` with the paths it leaves unset (None) placed in this run directory. The config file
        keeps them unset, so that they follow the directory when it moves."""
        rollout = dataclasses.replace(cfg.rollout, log_dir=cfg.rollout.log_dir or str(self.engine_logs))
        sync = dataclasses.replace(cfg.sync, disk_dir=cfg.sync.disk_dir or str(self.weight_sync))
        return dataclasses.replace(cfg, rollout=rollout, sync=sync)
