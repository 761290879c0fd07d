"""How the processes of a multi-node job end together.

- A learner node runs torchrun as a child and passes SIGTERM on to it (the trainer checkpoints at the
  next step boundary and stops: megatron_s2l/run/stop.py). When torchrun ends, for any reason, it
  asks every engine node to shut down (`request_shutdown`), then exits with the trainer's status.
- An engine node runs its `s2l serve` command(s) and a small control endpoint (`ShutdownServer`:
  `POST /shutdown` with the engines' API key as bearer token). The call, or SIGINT, or one of its
  commands ending, stops them all. SIGTERM alone does not: under SLURM every task receives it when the
  job is warned before its time limit, and the engines must outlive the trainer's last step and
  checkpoint; the engine node then waits up to `term_grace_s` for the call (a second SIGTERM stops it
  at once).
"""

from __future__ import annotations

import hmac
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

SHUTDOWN_PATH = "/shutdown"


class ShutdownServer:
    """`POST /shutdown` with `Authorization: Bearer <api_key>` sets `requested`; anything else is
    refused (401 without the key, 404 elsewhere)."""

    def __init__(self, host: str, port: int, api_key: str) -> None:
        self.requested = threading.Event()
        requested, expected = self.requested, f"Bearer {api_key}".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                given = self.headers.get("Authorization", "").encode()
                if self.path != SHUTDOWN_PATH:
                    self.send_response(404)
                elif not hmac.compare_digest(given, expected):
                    self.send_response(401)
                else:
                    requested.set()
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:  # one line per call is enough: see below
                pass

        self._httpd = ThreadingHTTPServer((host, port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def request_shutdown(hosts: list[str], port: int, api_key: str, timeout_s: float = 10.0) -> list[str]:
    """Ask each engine node's control endpoint to stop its engines; returns the hosts that did not
    answer 200 (already gone, or unreachable: SLURM's `srun --wait` ends those)."""
    failed = []
    for host in hosts:
        url = f"http://{host}:{port}{SHUTDOWN_PATH}"
        try:
            status = httpx.post(
                url, headers={"Authorization": f"Bearer {api_key}"}, timeout=timeout_s
            ).status_code
        except httpx.HTTPError:
            status = None
        print(f"s2l launch: shutdown {url}: {status or 'no answer'}", flush=True)
        if status != 200:
            failed.append(host)
    return failed


def run_trainer(argv: list[str], kill_after_s: float) -> tuple[int, bool]:
    """Run torchrun `argv` to its end, passing SIGTERM/SIGINT on; (exit status, whether a signal
    came). After a signal it gets `kill_after_s` to stop before its process group is killed."""
    signalled = threading.Event()
    proc = subprocess.Popen(argv, start_new_session=True)  # our signals reach it only through us

    def forward(signum: int, frame: object) -> None:
        signalled.set()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        deadline = None
        while True:
            if signalled.is_set() and deadline is None:
                deadline = time.monotonic() + kill_after_s
            try:
                return proc.wait(timeout=1.0), signalled.is_set()
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() > deadline:
                    print(f"s2l launch: trainer still running {kill_after_s:.0f} s after SIGTERM: killed")
                    os.killpg(proc.pid, signal.SIGKILL)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def engine_node_stop(shutdown: threading.Event, term_grace_s: float) -> Callable[[], bool]:
    """Installs the engine node's signal handlers; returns the predicate `supervise` polls: the
    shutdown call came, SIGINT or a second SIGTERM came, or `term_grace_s` passed since SIGTERM."""
    term_at: list[float] = []

    def on_term(signum: int, frame: object) -> None:
        if term_at:
            shutdown.set()
            return
        term_at.append(time.monotonic())
        print(
            f"s2l launch: SIGTERM: the engines serve on until the trainer's shutdown call (at most "
            f"{term_grace_s:.0f} s; a second SIGTERM stops them now)",
            flush=True,
        )

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, lambda *_: shutdown.set())
    return lambda: shutdown.is_set() or bool(term_at and time.monotonic() - term_at[0] > term_grace_s)
