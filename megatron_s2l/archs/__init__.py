"""Model architectures: the bundled Qwen3 dense configs and any Hugging Face `config.json`.

    from megatron_s2l.archs import load_arch
    load_arch("qwen3-8b").param_count()        # 8,190,735,360; also "8b", "Qwen3-8B-Base"
    load_arch("/models/Qwen3-8B-Base")          # reads the directory's config.json

The bundled files (`qwen3-*.json`, one per model) hold the public `config.json` values of
Qwen/Qwen3-{0.6B,1.7B,4B,8B,14B}-Base, the checkpoints the seed paper trains, and of Qwen/Qwen3-32B
(no 32B Base was released). Base and post-trained checkpoints of one size share the architecture;
only `max_position_embeddings` differs (32,768 for Base, 40,960 post-trained). Sizes are counted
from the fields alone, so the FLOPs model and a memory planner need no weights and no torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_BUNDLED_DIR = Path(__file__).parent
SUPPORTED_MODEL_TYPES = ("qwen3",)


@dataclass(frozen=True, slots=True)
class ModelArch:
    """A dense decoder (Qwen3: GQA, qk-norm, RMSNorm, SwiGLU, no biases), fields named as in `config.json`."""

    name: str
    """The bundled name (`qwen3-8b`) or the directory the config was read from."""
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    """Width of the SwiGLU MLP (gate, up and down projections)."""
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    """Per-head width; for Qwen3 NOT hidden_size / num_attention_heads (0.6B: 128, not 64)."""
    tie_word_embeddings: bool
    """The LM head reuses the input embedding (0.6B-4B) instead of its own matrix (8B and up)."""
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float

    @classmethod
    def from_hf_config(cls, raw: dict[str, Any], name: str) -> ModelArch:
        """Parse a `config.json` dict; rejects layouts the counts below would get wrong."""
        if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"{name}: model_type {raw.get('model_type')!r} is not supported "
                f"(expected one of {SUPPORTED_MODEL_TYPES})"
            )
        if raw.get("attention_bias", False) or raw.get("hidden_act", "silu") != "silu":
            raise ValueError(f"{name}: attention biases or a non-SwiGLU MLP are not a Qwen3 dense layout")
        heads = raw["num_attention_heads"]
        rope = raw.get("rope_parameters") or {}  # transformers 5 nests rope_theta here
        if rope.get("rope_type", "default") != "default" or raw.get("rope_scaling"):
            raise ValueError(f"{name}: only default RoPE is supported, got {rope or raw.get('rope_scaling')}")
        if heads % raw.get("num_key_value_heads", heads) != 0:
            raise ValueError(f"{name}: num_attention_heads {heads} not divisible by num_key_value_heads")
        return cls(
            name=name,
            model_type=raw["model_type"],
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            intermediate_size=raw["intermediate_size"],
            num_hidden_layers=raw["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=raw.get("num_key_value_heads", heads),
            head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            max_position_embeddings=raw.get("max_position_embeddings", 40960),
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", raw.get("rope_theta", 1_000_000.0))),
        )

    @property
    def heads_per_group(self) -> int:
        """Query heads per key/value head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    def attention_matmul_params(self) -> int:
        """q, k, v and o projection weights of one layer."""
        q_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        return 2 * self.hidden_size * q_width + 2 * self.hidden_size * kv_width

    def mlp_params(self) -> int:
        """gate, up and down projection weights of one layer."""
        return 3 * self.hidden_size * self.intermediate_size

    def layer_params(self) -> int:
        """One decoder layer: projections, its two RMSNorms and Qwen3's per-head q_norm/k_norm."""
        norms = 2 * self.hidden_size + 2 * self.head_dim
        return self.attention_matmul_params() + self.mlp_params() + norms

    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def lm_head_params(self) -> int:
        """The LM head's own parameters: 0 when tied to the embedding."""
        return 0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size

    def param_count(self) -> int:
        """All parameters, as `sum(p.numel() for p in model.parameters())` counts them (tied ones once)."""
        final_norm = self.hidden_size
        return (
            self.embedding_params()
            + self.num_hidden_layers * self.layer_params()
            + final_norm
            + self.lm_head_params()
        )

    def matmul_params(self) -> int:
        """Weights a token is multiplied by in one forward pass: every projection and the LM head
        (tied or not); the embedding lookup and the norms are not matmuls."""
        per_layer = self.attention_matmul_params() + self.mlp_params()
        return self.num_hidden_layers * per_layer + self.vocab_size * self.hidden_size


def bundled_names() -> list[str]:
    """Names `load_arch` knows without a checkpoint: qwen3-0.6b ... qwen3-32b, smallest first."""
    names = [p.stem for p in _BUNDLED_DIR.glob("qwen3-*.json")]
    return sorted(names, key=lambda n: float(n.removeprefix("qwen3-").removesuffix("b")))


def _bundled_key(name: str) -> str:
    """`8b`, `qwen3-8b`, `Qwen3-8B-Base` -> `qwen3-8b`."""
    key = name.strip().lower().removesuffix("-base")
    return key if key.startswith("qwen3-") else f"qwen3-{key}"


def load_arch(name_or_path: str | Path) -> ModelArch:
    """A bundled architecture by name, or the one in a Hugging Face model directory's config.json."""
    path = Path(name_or_path)
    if (path / "config.json").is_file():
        return ModelArch.from_hf_config(json.loads((path / "config.json").read_text()), str(path))
    key = _bundled_key(str(name_or_path))
    bundled = _BUNDLED_DIR / f"{key}.json"
    if bundled.is_file():
        return ModelArch.from_hf_config(json.loads(bundled.read_text()), key)
    raise ValueError(
        f"{name_or_path}: neither a model directory with a config.json nor a bundled architecture "
        f"({', '.join(bundled_names())})"
    )
