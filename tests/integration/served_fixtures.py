"""Session-scoped `s2l serve` engines of the demo models, as an engine node runs them, shared by every
test whose run attaches to them (`rollout.<pool>.external_urls`); loaded by `conftest.py`.

Tests use the function-scoped `served` fixture, which
- before the test checks that every server is healthy, idle (`POST /flush_cache` answers 200 only with
  no request running or waiting) and on its base weights (weight version "default"), and restarts a
  server that is not: a test that fails and leaves a server broken does not fail the next one;
- after the test loads the base weights back from disk (weight version "default"): a run that
  attaches syncs its own weights into the learner engines.
The learner model is served by two engines (a pool of several engines, as on a cluster), the
explorer by one. They serve copies of the demo models (same directory names, other paths), so that
a test can tell a run's own engines from these by their command lines.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from megatron_s2l.rollout.http import http_get_json, http_get_ok

ROOT = Path(__file__).resolve().parents[2]
_URL_LINE = re.compile(r"^\S+: (http://\S+) \(pid")


@dataclass
class ServedModel:
    """One `s2l serve` process (its engines on free ports), restartable."""

    model: Path
    log_dir: Path
    num_engines: int = 1
    proc: subprocess.Popen | None = None
    urls: list[str] = field(default_factory=list)
    restarts: int = 0

    def start(self) -> None:
        self.spawn()
        self.wait_serving()

    def spawn(self) -> None:
        cmd = [str(Path(sys.executable).parent / "s2l"), "serve", "--model", str(self.model)]
        cmd += ["--num-engines", str(self.num_engines), "--log-dir", str(self.log_dir)]
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )

    def wait_serving(self) -> None:
        self.urls = []
        for line in self.proc.stdout:  # blocks until every server is healthy (or the command ends)
            if match := _URL_LINE.match(line):
                self.urls.append(match.group(1))
            if line.startswith("serving"):
                assert len(self.urls) == self.num_engines, self.urls
                return
        raise RuntimeError(f"s2l serve {self.model} ended: {self.proc.communicate()[0][-3000:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.communicate(timeout=60)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
        self.restarts += 1

    def problem(self) -> str | None:
        """Why a test could not use these engines as they are (None: healthy, idle, base weights)."""
        if self.proc is None or self.proc.poll() is not None:
            return "s2l serve is not running"
        for url in self.urls:
            if not http_get_ok(url + "/health"):
                return f"{url} is not healthy"
            if httpx.post(url + "/flush_cache", timeout=10).status_code != 200:
                return f"{url} has requests in flight"
            version = http_get_json(url + "/model_info").get("weight_version")
            if version != "default":
                return f"{url} holds weight version {version!r}, not the base weights"
        return None

    def load_base_weights(self) -> None:
        for url in self.urls:
            body = {"model_path": str(self.model), "weight_version": "default"}
            with contextlib.suppress(httpx.HTTPError):  # a broken server is restarted before the next test
                httpx.post(url + "/update_weights_from_disk", json=body, timeout=120)


@pytest.fixture(scope="session")
def served_models(demo, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("served")
    sources = {"learner": demo.learner_dir, "explorer": demo.explorer_dir}
    copies = {pool: Path(shutil.copytree(src, root / "models" / src.name)) for pool, src in sources.items()}
    models = {
        "learner": ServedModel(copies["learner"], root / "logs" / "learner", num_engines=2),
        "explorer": ServedModel(copies["explorer"], root / "logs" / "explorer"),
    }
    try:
        for model in models.values():  # the servers start side by side
            model.spawn()
        for model in models.values():
            model.wait_serving()
        yield models
    finally:
        for model in models.values():
            model.stop()


@pytest.fixture
def served(served_models: dict[str, ServedModel]) -> dict[str, list[str]]:
    """{pool: engine URLs} of the shared engines, each checked clean (restarted if not) first."""
    for model in served_models.values():
        if model.problem() is not None:
            model.restart()
    yield {pool: list(model.urls) for pool, model in served_models.items()}
    for model in served_models.values():
        model.load_base_weights()


def attach(served: dict[str, list[str]], pools: tuple[str, ...] = ("learner", "explorer")) -> list[str]:
    """Overrides that attach a run's `pools` to the shared engines (JSON lists: a bare YAML flow list
    would split the URLs at their colons)."""
    return [f"rollout.{pool}.external_urls={served[pool]}".replace("'", '"') for pool in pools]
