"""logging.wandb: the real `wandb` package in offline mode, writing under the run directory only;
a run that asks for W&B without the package fails pre-flight naming the key. CPU only, no network."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from megatron_s2l.run import wandb_log
from megatron_s2l.run.metrics import RunLogger
from megatron_s2l.run.rundir import RunDir
from megatron_s2l.run.wandb_log import WandbConfig, wandb_problems

NUM_GPUS = 0
_BLOCK = 32768
"""The run file is a LevelDB-style log (what wandb-core writes): 32 KiB blocks of records, each with
a 7-byte header (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last piece), after a 7-byte
file header (":W&B", magic, version); every record is a `wandb_internal_pb2.Record`."""


def read_offline_run(offline: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(history rows, run config) of an offline run directory, read from its `.wandb` file."""
    from wandb.proto import wandb_internal_pb2

    [path] = offline.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, payloads, pending = 7, [], b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        piece = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = piece
        else:
            pending += piece
        if kind in (1, 4):
            payloads.append(pending)
    history, config = [], {}
    for payload in payloads:
        record = wandb_internal_pb2.Record.FromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            # A key is in `key` or, as wandb-core writes history, in `nested_key` (path parts).
            history.append(
                {
                    item.key or "/".join(item.nested_key): json.loads(item.value_json)
                    for item in record.history.item
                }
            )
        elif kind == "run":
            config = {
                item.key or "/".join(item.nested_key): json.loads(item.value_json)
                for item in record.run.config.update
            }
    return history, config


@pytest.fixture
def quiet_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B's own settings and caches in a scratch directory apart from the run's (nothing in $HOME)."""
    home = tmp_path / "wandb-home"
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(name, str(home / name.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    return home


def test_offline_mode_writes_the_metrics_and_config_under_the_run_directory(
    tmp_path: Path, quiet_wandb, monkeypatch: pytest.MonkeyPatch
) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # W&B's default place (./wandb) must stay unused
    run = RunDir(tmp_path / "run")
    logger = RunLogger(
        run,
        tensorboard=False,
        total_steps=2,
        out=io.StringIO(),
        wandb=WandbConfig(mode="offline", project="s2l-test"),
        config={"name": "tiny", "schedule": {"steps": 2, "t_mix": 1}},
        run_name="tiny",
    )
    logger.log(1, {"loss/total": 0.5, "reward/mean": 1.0, "phase": "train"})
    logger.log(2, {"loss/total": 0.25, "grad_norm": float("nan")})
    logger.close()
    [offline] = (run.root / "wandb").glob("offline-run-*")
    assert list(offline.glob("run-*.wandb")), "the run's records"
    history, config = read_offline_run(offline)
    assert [(row["_step"], row["loss/total"]) for row in history] == [(1, 0.5), (2, 0.25)]
    assert history[0]["reward/mean"] == 1.0 and "phase" not in history[0] and "grad_norm" not in history[1]
    assert config["schedule"] == {"steps": 2, "t_mix": 1}
    assert run.metrics_file.read_text().count("\n") == 2  # metrics.jsonl as always
    assert list(cwd.iterdir()) == []


def test_off_by_default_and_a_missing_package_is_a_pre_flight_problem(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert WandbConfig().mode == "off" and wandb_problems(WandbConfig()) == []
    assert wandb_problems(WandbConfig(mode="offline")) == []  # installed here
    monkeypatch.setattr(wandb_log.importlib.util, "find_spec", lambda name: None)  # an image without it
    [problem] = wandb_problems(WandbConfig(mode="online"))
    assert problem.startswith("logging.wandb.mode: 'online' needs the `wandb` package")
    assert wandb_problems(WandbConfig()) == []
    with pytest.raises(ValueError, match="mode must be 'off', 'offline' or 'online'"):
        WandbConfig(mode="on")
