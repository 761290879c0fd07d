"""The sync section of the run config (only the dataclass: no HTTP or torch.distributed imports)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True, slots=True)
class SyncConfig:
    """How learner weights reach the learner engines after each optimizer step."""

    transport: Literal["disk", "tensor", "distributed"] = "distributed"
    """`distributed` (broadcast; disaggregated engines), `tensor` (colocated), `disk` (safetensors)."""
    bucket_mb: int = 512
    """Bucket size in MiB: the most a transport holds or sends at once (one tensor may exceed it)."""
    timeout_s: float = 120.0
    """Time-out of each engine request and of the broadcast group (short, so a mismatch fails fast)."""
    max_retries: int = 2
    """Re-sends of a failed bucket before the update fails."""
    pause_mode: Literal["retract", "abort", "in_place"] = "retract"
    """`/pause_generation` mode: `retract` resumes in-flight requests on the new weights after the
    update (their KV cache is recomputed); `abort` ends them (the client re-sends them); `in_place`
    keeps them and their old-weight KV cache (no flush: faster, slightly off-policy)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Broadcast backend of the distributed transport; auto: nccl for CUDA tensors, gloo on CPU."""
    master_address: str = "auto"
    """Address of the sending rank that the engines connect to (distributed transport); `auto`: each
    sender's own address on the route to the engines (127.0.0.1 for engines on this machine)."""
    disk_dir: str | None = None
    """Directory of the disk transport (visible to the engines; only the latest version is kept);
    None: the run directory's `weight-sync/`, which no other run shares."""

    def __post_init__(self) -> None:
        if self.bucket_mb < 1:
            raise ValueError(f"bucket_mb must be >= 1, got {self.bucket_mb}")
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {self.max_retries}")
        if not self.master_address:
            raise ValueError("master_address must not be empty")
