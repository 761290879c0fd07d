"""Stream a Hugging Face safetensors checkpoint (single file or sharded index) into this rank's
Megatron shards: each rank memory-maps the files and reads only the slices it owns, one tensor at a
time, so an 8B checkpoint is never materialised whole on any rank."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import safe_open

from megatron_s2l.archs import ModelArch
from megatron_s2l.learner.convert import map_megatron_param, read_shard
from megatron_s2l.learner.model import stage_layer_offset, unwrap_model


class SafetensorsSource:
    """`TensorSource` over `model.safetensors` or `model.safetensors.index.json` in `hf_dir`."""

    def __init__(self, hf_dir: str | Path) -> None:
        hf_dir = Path(hf_dir)
        index = hf_dir / "model.safetensors.index.json"
        if index.exists():
            weight_map = json.loads(index.read_text())["weight_map"]
            self._file_of = {name: hf_dir / fname for name, fname in weight_map.items()}
            missing = sorted({str(path) for path in self._file_of.values() if not path.is_file()})
            if missing:
                raise FileNotFoundError(f"{index} names weight files that are missing: {', '.join(missing)}")
        elif (hf_dir / "model.safetensors").exists():
            single = hf_dir / "model.safetensors"
            with safe_open(str(single), framework="pt") as f:
                self._file_of = {name: single for name in f.keys()}  # noqa: SIM118 (not a dict)
        else:
            raise FileNotFoundError(f"{hf_dir}: no model.safetensors or model.safetensors.index.json")

    def _slice(self, name: str):
        if name not in self._file_of:
            raise KeyError(f"tensor {name!r} is not in the checkpoint")
        with safe_open(str(self._file_of[name]), framework="pt") as f:
            return f.get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int = 0) -> torch.Tensor:
        tensor_slice = self._slice(name)
        if dim is None:
            return tensor_slice[:]
        index = (slice(None),) * dim + (slice(start, stop),)
        return tensor_slice[index]


@torch.no_grad()
def load_hf_weights(model: torch.nn.Module, hf_dir: str | Path, arch: ModelArch) -> int:
    """Copy the HF checkpoint into every parameter of this rank's stage; returns the count loaded.

    Fails if a parameter has no HF tensor or a shape disagrees (nothing is left at its init).
    """
    from megatron.core import parallel_state

    source = SafetensorsSource(hf_dir)
    module = unwrap_model(model)
    tp = parallel_state.get_tensor_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    offset = stage_layer_offset(module)
    padded_vocab = module.vocab_size
    count = 0
    for name, param in module.named_parameters():
        mapping = map_megatron_param(name, layer_offset=offset, tied=arch.tie_word_embeddings)
        shard = read_shard(mapping, source, arch, tp_rank=tp_rank, tp=tp, padded_vocab=padded_vocab)
        if shard.shape != param.shape:
            raise ValueError(
                f"{name}: checkpoint shard {tuple(shard.shape)} != parameter {tuple(param.shape)}"
            )
        param.copy_(shard)
        count += 1
    return count


_FINGERPRINT_BLOCK = 1 << 20
_FINGERPRINT_SAMPLES = 17


def checkpoint_fingerprint(hf_dir: str | Path) -> str:
    """A content fingerprint of an HF checkpoint, cheap enough for a 16 GB model: config.json, and
    for every weight file its name, size and 17 blocks of 1 MiB spread evenly over it (start and
    end included). A resumed run compares it to refuse a base checkpoint that changed under it;
    a change confined to bytes between the sampled blocks goes unnoticed."""
    hf_dir = Path(hf_dir)
    digest = hashlib.sha256((hf_dir / "config.json").read_bytes())
    for path in sorted(hf_dir.glob("*.safetensors")):
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        last = max(size - _FINGERPRINT_BLOCK, 0)
        with path.open("rb") as f:
            for i in range(_FINGERPRINT_SAMPLES):
                f.seek(last * i // (_FINGERPRINT_SAMPLES - 1))
                digest.update(f.read(_FINGERPRINT_BLOCK))
    return digest.hexdigest()
