"""Engine servers against hostile neighbours, without SGLang: the API key stays off command lines and
out of logs, `extra_args` cannot re-open what the config closes, a process that takes an engine's
port is not taken for the engine, and the child set-up after fork calls no dlopen.

The "engine" here is a small Python HTTP server started the way engines are (ManagedProcess): the
checks are of sockets, process groups, files and HTTP answers, which it has as SGLang has;
tests/integration/test_rollout_server_security.py repeats the key and port checks on SGLang itself."""

from __future__ import annotations

import ctypes
import http.server
import os
import socket
import stat
import sys
import threading
from pathlib import Path
from typing import ClassVar

import pytest

from megatron_s2l.configio import ConfigError
from megatron_s2l.rollout.config import EngineConfig
from megatron_s2l.rollout.http import EngineEndpoint
from megatron_s2l.rollout.server import (
    REDACTED,
    EngineServer,
    ExternalServer,
    ManagedProcess,
    PortInUseError,
    ServerIdentityError,
    listening_socket_inodes,
    socket_inodes_of,
)

KEY = "s2l-unit-test-key-8d1f0c"


class _AnswersEverything(http.server.BaseHTTPRequestHandler):
    """A foreign server: 200 and `{}` to any GET, whatever the key; records what it was sent."""

    seen_authorization: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen_authorization.append(self.headers.get("Authorization", ""))
        body = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _foreign_server(port: int) -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _AnswersEverything)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


# An engine stand-in: loads for `delay` seconds (SGLang loads its model before it binds), then serves
# /health with 200 and anything else with 401 unless the bearer token is its key (as SGLang does).
_SLOW_ENGINE = """
import http.server, sys, time
port, delay, key = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
print("server_args={'api_key': '%s', 'port': %d}" % (key, port), flush=True)
time.sleep(delay)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/health" or self.headers.get("Authorization") == "Bearer " + key
        self.send_response(200 if ok else 401); self.send_header("content-length", "2"); self.end_headers()
        self.wfile.write(b"{}")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _engine_with_stand_in(tmp_path: Path, monkeypatch, port: int, delay: float) -> EngineServer:
    """An EngineServer (configured port, key from the environment) whose process runs the stand-in."""
    monkeypatch.setenv("S2L_UNIT_KEY", KEY)
    config = EngineConfig(device="cuda", port=port, api_key_env="S2L_UNIT_KEY", startup_timeout_s=30)
    server = EngineServer(tmp_path / "model", config, tmp_path / "logs" / "e0.log", name="e0")
    server.process.cmd = [sys.executable, "-c", _SLOW_ENGINE, str(port), str(delay), KEY]
    return server


@pytest.mark.parametrize(
    "extra",
    [
        ["--host", "0.0.0.0"],
        ["--host=0.0.0.0"],
        ["--hos", "0.0.0.0"],  # argparse expands an unambiguous abbreviation
        ["--port", "1"],
        ["--api-key", "x"],
        ["--admin-api-key=x"],
        ["--config", "other.yaml"],
        ["--dtype", "float16", "--config=other.yaml"],
    ],
)
def test_extra_args_cannot_override_the_flags_the_config_sets(extra: list[str]) -> None:
    with pytest.raises(
        ValueError, match=r"extra_args: .* would override --(host|port|api-key|admin-api-key|config)"
    ):
        EngineConfig(extra_args=extra)


def test_extra_args_are_checked_at_config_load_and_by_s2l_serve(tmp_path) -> None:
    from megatron_s2l.config import load_config
    from megatron_s2l.rollout import serve_cli

    with pytest.raises(ConfigError, match=r"rollout.learner.engine: extra_args: '--host=0.0.0.0'"):
        load_config("yaml/demo-cpu.yaml", ["rollout.learner.engine.extra_args=[--host=0.0.0.0]"])
    import argparse

    parser = argparse.ArgumentParser()
    serve_cli.add_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path), "--extra", "--host", "0.0.0.0"])
    with pytest.raises(ValueError, match="would override --host"):
        serve_cli.run(args)  # refused before any server starts
    assert EngineConfig(extra_args=["--hostname-check", "--portal"]).extra_args  # other flags pass


def test_the_key_stays_off_the_command_line_and_in_a_private_file(tmp_path, monkeypatch) -> None:
    server = _engine_with_stand_in(tmp_path, monkeypatch, 0, 0.0)
    sglang_cmd = EngineServer(tmp_path / "m", server.config, tmp_path / "x.log").process.cmd
    assert KEY not in " ".join(sglang_cmd) and "--api-key" not in sglang_cmd
    key_file = Path(sglang_cmd[sglang_cmd.index("--config") + 1])
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    generated = EngineServer(tmp_path / "m", EngineConfig(device="cuda"), tmp_path / "y.log")
    assert generated.api_key and generated.api_key not in " ".join(
        generated.process.cmd
    )  # loopback: keyed too
    assert (
        EngineServer(
            tmp_path / "m", EngineConfig(device="cuda"), tmp_path / "z.log", generate_key=False
        ).api_key
        is None
    )
    assert KEY not in repr(EngineEndpoint("http://h:1", 1, KEY))


def test_child_output_reaches_a_private_log_with_the_key_replaced(tmp_path) -> None:
    log = tmp_path / "e.log"
    log.write_text("an earlier run\n")
    log.chmod(0o644)
    key_file = tmp_path / "key.yaml"
    # The child reads its key from the private file, as SGLang reads its --config file.
    code = "import sys; k = open(sys.argv[1]).read(); print('server_args=' + repr({'api_key': k}))"
    code += "; sys.stderr.write(k + chr(10)); sys.exit(3)"
    cmd = [sys.executable, "-c", code, str(key_file)]
    process = ManagedProcess("p", cmd, dict(os.environ), log, secrets=(KEY,), private_files={key_file: KEY})
    process.spawn()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    process.proc.wait(timeout=30)
    tail = process.log_tail()
    process.stop(timeout_s=5)
    text = log.read_text()
    assert KEY not in text and text.count(REDACTED) == 2 and "an earlier run" in text
    assert KEY not in tail and REDACTED in tail
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert not key_file.exists()  # removed at stop


def test_setup_after_fork_resolves_nothing(tmp_path, monkeypatch) -> None:
    """dlopen between fork and exec can hang on a lock a CUDA/NCCL thread of the parent held at fork
    (issue 19, defect 6): with ctypes.CDLL unusable, the child still starts and has its death signal."""

    def no_dlopen(*args, **kwargs):
        raise AssertionError("ctypes.CDLL called after fork")

    monkeypatch.setattr(ctypes, "CDLL", no_dlopen)  # in this process: the child exec's a fresh Python
    code = (
        "import ctypes\n"
        "libc = ctypes.CDLL(None)\n"  # the child may: it has exec'd
        "v = ctypes.c_int()\n"
        "libc.prctl(2, ctypes.byref(v))\n"  # PR_GET_PDEATHSIG
        "print('pdeathsig', v.value)\n"
    )
    process = ManagedProcess("p", [sys.executable, "-c", code], dict(os.environ), tmp_path / "p.log")
    process.spawn()
    assert process.proc.wait(timeout=30) == 0
    process.stop(timeout_s=5)
    assert "pdeathsig 15" in (tmp_path / "p.log").read_text()


def test_listening_sockets_are_found_with_their_owner() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        inodes = listening_socket_inodes(port)
        assert len(inodes) == 1 and inodes <= socket_inodes_of([os.getpid()])
    assert listening_socket_inodes(port) == set()


def test_a_process_that_binds_the_port_during_start_up_is_refused(tmp_path, monkeypatch) -> None:
    """The port is free at the check; a foreign server (200 to everything) binds it while the engine
    loads. It is refused, naming the port, and never sees the key; the engine is stopped."""
    port = _free_port()
    server = _engine_with_stand_in(tmp_path, monkeypatch, port, delay=3.0)
    foreign: list[http.server.ThreadingHTTPServer] = []
    spawn = server.process.spawn

    def spawn_then_take_the_port() -> None:
        spawn()
        foreign.append(_foreign_server(port))

    server.process.spawn = spawn_then_take_the_port
    _AnswersEverything.seen_authorization = []
    try:
        with pytest.raises(PortInUseError, match=f"another process listens on port {port}"):
            server.start()
    finally:
        for f in foreign:
            f.shutdown()
            f.server_close()
    assert not server.process.is_running()
    assert not any(KEY in header for header in _AnswersEverything.seen_authorization)


def test_the_engine_is_trusted_once_its_socket_and_key_are_proven(tmp_path, monkeypatch) -> None:
    server = _engine_with_stand_in(tmp_path, monkeypatch, _free_port(), delay=0.5)
    try:
        server.start()
        assert server.is_healthy()
    finally:
        server.stop()
    log = (tmp_path / "logs" / "e0.log").read_text()
    assert KEY not in log and f"'api_key': '{REDACTED}'" in log


def test_an_attached_server_that_takes_any_key_is_refused(tmp_path, monkeypatch) -> None:
    port = _free_port()
    foreign = _foreign_server(port)
    monkeypatch.setenv("S2L_UNIT_KEY", KEY)
    config = EngineConfig(api_key_env="S2L_UNIT_KEY", startup_timeout_s=5)
    try:
        with pytest.raises(
            ServerIdentityError, match="answered GET /model_info with 200 to its API key and 200"
        ):
            ExternalServer(f"http://127.0.0.1:{port}", tmp_path / "m", config, name="learner0").start()
    finally:
        foreign.shutdown()
        foreign.server_close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
