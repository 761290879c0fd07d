"""Learner -> learner-engine weight sync: bucket the learner's HF-named tensors, send by transport."""

from megatron_s2l.sync.weight_sync import SyncConfig, SyncResult, WeightSync, WeightSyncError

__all__ = ["SyncConfig", "SyncResult", "WeightSync", "WeightSyncError"]
