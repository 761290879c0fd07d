"""A keyed SGLang 0.5.23 server (CPU, tiny model) and its router leak the key nowhere: not on any
process's command line, not in any file of the log directory (SGLang prints its `server_args=`, key
included: the log shows the redaction), not in an error; and a process that takes the engine's
port while SGLang loads is refused, never sent the key."""

from __future__ import annotations

import http.server
import os
import secrets
import signal
import socket
import stat
import threading
from pathlib import Path
from typing import ClassVar

import pytest
from rollout_fixtures import live_group_members
from rollout_reference import engine_greedy

from megatron_s2l.rollout.config import EngineConfig
from megatron_s2l.rollout.http import http_get_status
from megatron_s2l.rollout.server import REDACTED, EngineServer, PortInUseError, RouterServer

pytestmark = [pytest.mark.slow, pytest.mark.sglang]


def _engine_config(port: int = 0) -> EngineConfig:
    return EngineConfig(
        device="cpu",
        port=port,
        api_key_env="S2L_IT_KEY",
        max_total_tokens=4096,
        context_length=512,
        max_running_requests=4,
    )


def _command_lines_with(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                    if text.encode() in cmdline.read():
                        found.append(entry)
            except OSError:
                continue
    return found


def test_a_keyed_engine_and_router_leak_the_key_nowhere(tiny_models, tmp_path, monkeypatch) -> None:
    key = "s2l-it-" + secrets.token_hex(16)
    monkeypatch.setenv("S2L_IT_KEY", key)
    logs = tmp_path / "logs"
    server = EngineServer(tiny_models["learner"], _engine_config(), logs / "learner0.log", name="learner0")
    router = RouterServer([server.url], logs / "router.log", policy="round_robin", api_key=key)
    try:
        server.start()
        router.start()
        assert _command_lines_with(key) == []
        assert http_get_status(server.url + "/health") == 200  # needs no key
        assert http_get_status(server.url + "/model_info", key) == 200
        assert http_get_status(server.url + "/model_info", "wrong") == 401
        assert http_get_status(server.url + "/model_info") == 401
        through_router = engine_greedy(router.url, [11, 12, 13], 4, api_key=key)
        assert (
            through_router["output_ids"]
            == engine_greedy(server.url, [11, 12, 13], 4, api_key=key)["output_ids"]
        )
        group = server.pid
        server.process.kill(signal.SIGKILL)  # an engine that dies: its error quotes its log's tail
        with pytest.raises(RuntimeError, match="exited with code") as error:
            server.wait_healthy(30.0)
        assert key not in str(error.value)
    finally:
        router.stop()
        server.stop()
    assert live_group_members(group) == []
    engine_log = (logs / "learner0.log").read_text()
    assert f"'api_key': '{REDACTED}'" in engine_log  # SGLang printed the key; the log holds the marker
    for path in logs.rglob("*"):
        assert key not in path.read_text(errors="replace"), path
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not server.key_file.exists()


class _AnswersEverything(http.server.BaseHTTPRequestHandler):
    seen_authorization: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen_authorization.append(self.headers.get("Authorization", ""))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def test_a_process_that_takes_the_port_while_sglang_loads_is_refused(
    tiny_models, tmp_path, monkeypatch
) -> None:
    """The port is free when checked; a foreign HTTP server (200 to anything, /health included) binds
    it right after SGLang is spawned, long before SGLang binds it (after loading the model)."""
    monkeypatch.setenv("S2L_IT_KEY", "s2l-it-" + secrets.token_hex(16))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = EngineServer(tiny_models["learner"], _engine_config(port), tmp_path / "e.log", name="learner0")
    foreign: list[http.server.ThreadingHTTPServer] = []
    spawn = server.process.spawn

    def spawn_then_take_the_port() -> None:
        spawn()
        taker = http.server.ThreadingHTTPServer(("127.0.0.1", port), _AnswersEverything)
        threading.Thread(target=taker.serve_forever, daemon=True).start()
        foreign.append(taker)

    server.process.spawn = spawn_then_take_the_port
    try:
        with pytest.raises(PortInUseError, match=f"another process listens on port {port}"):
            server.start()
    finally:
        server.stop()
        for taker in foreign:
            taker.shutdown()
            taker.server_close()
    assert live_group_members(server.pid) == []
    assert not any(server.api_key in header for header in _AnswersEverything.seen_authorization)
    assert Path(tmp_path / "e.log").exists()
