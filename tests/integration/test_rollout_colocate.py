"""Colocated mode's request sequence against a real SGLang 0.5.23 server on CPU.

On CPU, SGLang's memory saver cannot start (it needs the CUDA-only `torch_memory_saver`; the first
test pins that down, since it is why `rollout.colocate` is refused on CPU). A server without it
still takes `/release_memory_occupation` and `/resume_memory_occupation` (200, body `null`) and
keeps its scheduler's bookkeeping of released tags, but frees nothing. That bookkeeping is strict,
which is what the second test relies on: resuming a tag that was not released, or releasing while
a request runs, kills the server (measured; see megatron_s2l/rollout/colocate.py). So a server that
is still healthy and generates the synced weights after two rounds of release -> resume weights ->
weight sync -> resume KV cache shows the helper sends a sequence SGLang accepts. Whether memory is
really freed and regained needs a GPU: tools/colocate_check.py.
"""

from __future__ import annotations

import pytest
from rollout_reference import RUN_API_KEY, engine_greedy, hf_greedy, load_hf_model

from megatron_s2l.rollout.colocate import CUDA_GRAPH, KV_CACHE, MEMORY_SAVER_FLAG, WEIGHTS, Colocation
from megatron_s2l.rollout.config import EngineConfig, EnginePoolConfig
from megatron_s2l.rollout.http import bearer
from megatron_s2l.rollout.pool import EnginePool
from megatron_s2l.rollout.server import EngineServer
from megatron_s2l.sync.config import SyncConfig
from megatron_s2l.sync.manifest import read_weight_manifest
from megatron_s2l.sync.weight_sync import WeightSync, pool_endpoints

pytestmark = [pytest.mark.slow, pytest.mark.sglang]

NEW_TOKENS = 8
PROMPT = [11, 57, 203, 9, 141, 77]


def _engine(**kwargs) -> EngineConfig:
    return EngineConfig(max_total_tokens=4096, context_length=512, max_running_requests=16, **kwargs)


def test_memory_saver_server_exits_at_start_on_cpu(tiny_models, tmp_path) -> None:
    """Why colocate is a pre-flight error on CPU: if this ever starts, colocate could run here."""
    server = EngineServer(
        tiny_models["learner"], _engine(extra_args=[MEMORY_SAVER_FLAG]), tmp_path / "saver.log"
    )
    assert server.process.env["SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION"] == "false"
    assert server.process.env["SGLANG_MEMORY_SAVER_CUDA_GRAPH"] == "true"  # cuda_graph tag frees memory
    with pytest.raises(RuntimeError, match="exited with code") as failure:
        server.start()
    assert "torch_memory_saver" in str(failure.value) or "torch-memory-saver" in str(failure.value)


def test_release_resume_around_a_weight_sync_keeps_the_server_and_loads_the_new_weights(
    tiny_models, tmp_path
) -> None:
    target = tiny_models["target_disk"]
    expected = hf_greedy(target, PROMPT, NEW_TOKENS)
    pool = EnginePool("learner", tiny_models["learner"], EnginePoolConfig(engine=_engine()), tmp_path)
    with pool:
        url = pool.servers[0].url
        assert engine_greedy(url, PROMPT, NEW_TOKENS)["output_ids"] != expected, "weights must differ"
        colocation = Colocation(pool, enabled=True, timeout_s=60.0)
        sync = WeightSync(
            SyncConfig(transport="disk", timeout_s=60.0, disk_dir=str(tmp_path / "sync")),
            endpoints=pool_endpoints(pool),
            manifest=read_weight_manifest(pool.model_path),
        )
        try:
            for version in ("1", "2"):
                if version == "2":  # a request the client gives up on still runs in the server
                    _abandon_a_long_request(url)
                    assert pool.in_flight.get(url, 0) == 0
                colocation.release()  # waits for it (/flush_cache): a release now would kill the server
                assert colocation.released == {url: {KV_CACHE, WEIGHTS, CUDA_GRAPH}}
                colocation.resume_weights()
                assert colocation.released == {url: {KV_CACHE, CUDA_GRAPH}}
                pool.weight_version = version  # as megatron_s2l.train.sync_learner_engines does
                result = sync.update(load_hf_model(str(target)).named_parameters(), version=version)
                assert result.updated == [url]
                colocation.resume_kv_cache()
                assert colocation.released == {}
                assert pool.servers[0].is_healthy(), "a release/resume SGLang refused would kill it"
                after = engine_greedy(url, PROMPT, NEW_TOKENS)
                assert after["output_ids"] == expected
                assert after["meta_info"]["weight_version"] == version
        finally:
            sync.close()
        pool.check_weight_versions()
    log = "\n".join(path.read_text(errors="replace") for path in tmp_path.rglob("*.log"))
    assert "Cache not flushed because there are pending requests" in log, "the abandoned request ran"


def _abandon_a_long_request(url: str) -> None:
    """Start a long greedy generation and give up on it after 0.3 s (as a client time-out does)."""
    import httpx

    payload = {
        "input_ids": PROMPT,
        "sampling_params": {"temperature": 0.0, "max_new_tokens": 500, "ignore_eos": True},
    }
    with pytest.raises(httpx.TimeoutException):
        httpx.post(url + "/generate", json=payload, headers=bearer(RUN_API_KEY), timeout=0.3)


# The trainer's processes get this on PYTHONPATH: on CPU the memory saver cannot start, so the two
# CPU refusals are lifted and the servers start without it (their release/resume then answer 200
# and free nothing, but SGLang still checks the order: see the module doc). Server processes put
# cpu_shims/, which has its own sitecustomize, first on their path, so this never loads there.
_SITECUSTOMIZE = """
import megatron_s2l.rollout.colocate as colocate

colocate.colocate_config_errors = lambda config, sync_transport=None: []
colocate.colocated_pool = lambda pool: pool
"""


def test_train_loop_releases_and_resumes_at_every_step_on_real_engines(demo, tmp_path) -> None:
    """`s2l train rollout.colocate=true` (CPU refusal lifted, see above): at every step exactly one
    release, resume of the weights, resume of the KV cache, in that order, and the run ends with
    the learner engines on the last step's weights, never restarted (a wrong order kills them)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from megatron_s2l.run.metrics import read_metrics

    root = Path(__file__).resolve().parents[2]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path / "site"), os.environ.get("PYTHONPATH")])),
    )
    steps = 3
    cmd = [str(Path(sys.executable).parent / "s2l"), "train", "--config", "yaml/demo-cpu.yaml"]
    cmd += [
        "name=colocated",
        f"logging.run_dir={tmp_path}/{{name}}",
        "logging.tensorboard=false",
        f"model.learner={demo.learner_dir}",
        f"model.explorer={demo.explorer_dir}",
        f"data.train_files=[{demo.train_file}]",
        f"data.eval_files=[{demo.eval_file}]",
        f"schedule.steps={steps}",
        "schedule.t_mix=2",
        "schedule.group_size=4",
        "schedule.prompts_per_step=2",
        "learner.parallel.micro_batch_size=8",
        "checkpoint.every_steps=0",
        "eval.every_steps=0",
        "rollout.learner_sampling.max_new_tokens=8",
        "rollout.explorer_sampling.max_new_tokens=8",
        "rollout.colocate=true",
        "sync.transport=disk",
    ]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    events = [
        kind
        for line in out.splitlines()
        for kind, text in (
            ("release", "released their KV cache and weights"),
            ("weights", "resumed their weights"),
            ("kv", "resumed their kv_cache"),
        )
        if text in line
    ]
    assert events == ["release", "weights", "kv"] * steps, out[-4000:]
    records = read_metrics(tmp_path / "colocated")
    assert [r["weight_version"] for r in records if r["step"] > 0] == list(range(1, steps + 1))
    assert records[-1]["rollout/learner_weight_version"] == str(steps - 1)  # sampled after the syncs
    assert "pool learner: server" not in out  # no learner engine went down (and was restarted)
