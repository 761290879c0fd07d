"""The learner's rendezvous store on one node listens on 127.0.0.1 only, not on every interface
(torch's `env://` store listens on `*:port` whatever MASTER_ADDR says: the reference case below
shows that this check sees it). Two spawned ranks, gloo, no engine."""

from __future__ import annotations

import json
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from megatron_s2l.learner.parallel import bound_tcp_store, spawn_local_ranks


def _listening(pid: int) -> list[str]:
    """`address:port` of the TCP sockets process `pid` listens on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    return sorted(line.split()[3] for line in out.splitlines() if f"pid={pid}," in line)


def _rank(out_file: str, plain_env: bool) -> None:
    from megatron_s2l.learner.parallel import _init_default_group

    if plain_env:
        dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # torch's own env:// store
    else:
        _init_default_group("gloo", timedelta(seconds=60))
    if dist.get_rank() == 0:
        Path(out_file).write_text(json.dumps(_listening(os.getpid())))
    dist.barrier()
    dist.destroy_process_group()


def _is_wildcard(address: str) -> bool:
    return address.rsplit(":", 1)[0] in ("*", "0.0.0.0", "[::]")


def test_single_node_rendezvous_listens_on_loopback_only(tmp_path) -> None:
    out = tmp_path / "listening.json"
    spawn_local_ranks(_rank, 2, str(out), False)
    listening = json.loads(out.read_text())
    assert any(address.startswith("127.0.0.1:") for address in listening), listening
    assert not [a for a in listening if _is_wildcard(a)], listening


def test_reference_torch_env_store_listens_everywhere(tmp_path) -> None:
    out = tmp_path / "listening.json"
    spawn_local_ranks(_rank, 2, str(out), True)
    assert [a for a in json.loads(out.read_text()) if _is_wildcard(a)]


def test_bound_store_serves_clients_on_its_address() -> None:
    timeout = timedelta(seconds=10)
    master = bound_tcp_store("127.0.0.1", 0, 2, True, timeout)
    client = dist.TCPStore("127.0.0.1", master.port, 2, False, timeout=timeout)
    client.set("key", "value")
    assert master.get("key") == b"value"
    assert _listening(os.getpid()) == [f"127.0.0.1:{master.port}"]
