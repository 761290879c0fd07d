"""Session-scoped real SGLang servers for the rollout and weight-sync tests (CPU, tiny models).

Loaded by `tests/integration/conftest.py` (one import line), so each server starts once per test
session and is stopped by its own process group at the end, also when a test fails.

Models (all share one tokenizer, except `mismatched`):
- explorer: tied embeddings (as Qwen3-1.7B/4B), seed 0;
- learner: untied (as Qwen3-8B/14B), seed 1; the learner engine serves it at start;
- sync_targets[transport]: untied, seeds 2, 3, 4: weights each sync test pushes into the engine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from megatron_s2l.demo.tiny import make_tiny_qwen3, make_tokenizer
from megatron_s2l.rollout.config import ClientConfig, EngineConfig, EnginePoolConfig, RolloutConfig
from megatron_s2l.rollout.engines import RolloutEngines
from megatron_s2l.rollout.sampling_params import SamplingConfig

SYNC_TRANSPORTS = ("disk", "tensor", "distributed")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rollout_models")
    explorer = make_tiny_qwen3(root / "explorer", tie_word_embeddings=True, seed=0)
    models = {
        "explorer": explorer,
        "learner": make_tiny_qwen3(root / "learner", tokenizer_dir=explorer, seed=1),
    }
    for seed, transport in enumerate(SYNC_TRANSPORTS, start=2):
        models[f"target_{transport}"] = make_tiny_qwen3(
            root / f"target_{transport}", tokenizer_dir=explorer, seed=seed
        )
    other_tokenizer = root / "other_tokenizer"
    make_tokenizer(other_tokenizer, vocab_size=400, seed=7)
    models["mismatched"] = make_tiny_qwen3(root / "mismatched", tokenizer_dir=other_tokenizer, seed=5)
    return models


def cpu_rollout_config(log_dir: Path) -> RolloutConfig:
    engine = EngineConfig(max_total_tokens=4096, context_length=512, max_running_requests=16)
    return RolloutConfig(
        explorer=EnginePoolConfig(engine=engine),
        learner=EnginePoolConfig(engine=engine),
        explorer_sampling=SamplingConfig(temperature=0.7, top_p=0.95, max_new_tokens=8),
        learner_sampling=SamplingConfig(temperature=1.0, max_new_tokens=8),
        client=ClientConfig(max_concurrency=4, batch_size=4, request_timeout_s=120.0, max_retries=3),
        log_dir=str(log_dir),
    )


def live_group_members(group: int) -> list[int]:
    """PIDs in process group `group` that are not zombies (a zombie only waits for init to reap it)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat_file:
                    fields = stat_file.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == group and fields[0] != "Z":
                members.append(int(entry))
    return members


@pytest.fixture(scope="session")
def rollout_engines(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory):
    config = cpu_rollout_config(tmp_path_factory.mktemp("rollout_logs"))
    engines = RolloutEngines(
        config, explorer_model=tiny_models["explorer"], learner_model=tiny_models["learner"]
    )
    with engines:
        yield engines
    # The servers (restarted ones included) and all their children are gone.
    for server in [*engines.explorer.servers, *engines.learner.servers]:
        assert live_group_members(server.pid) == [], f"{server.name} left processes behind"
