"""The names and shapes of the weights a learner engine serves, read from its HF checkpoint.

SGLang's loaders skip tensor names they do not know without a word, so a renamed or missing tensor
in the learner's export would leave the engine silently on old weights. The sync therefore checks
every tensor against this manifest before sending it, and (single pipeline stage) that none is
missing. Only safetensors headers are read, not the weights.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path


class WeightManifestError(ValueError):
    """A tensor to send does not match what the engine serves."""


def read_weight_manifest(model_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """{hf_name: shape} of every tensor in the `*.safetensors` files of `model_dir`."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {model_dir}")
    manifest: dict[str, tuple[int, ...]] = {}
    for path in files:
        with open(path, "rb") as stream:
            (header_len,) = struct.unpack("<Q", stream.read(8))
            header = json.loads(stream.read(header_len))
        manifest.update(
            {name: tuple(info["shape"]) for name, info in header.items() if name != "__metadata__"}
        )
    return manifest


def check_against_manifest(name: str, shape: tuple[int, ...], manifest: dict[str, tuple[int, ...]]) -> None:
    if name not in manifest:
        raise WeightManifestError(f"weight {name!r} is not served by the engine (not in its checkpoint)")
    if tuple(shape) != manifest[name]:
        raise WeightManifestError(
            f"weight {name!r} has shape {tuple(shape)}, the engine's is {manifest[name]}"
        )
