"""Per-GPU decode throughput of Qwen3 SGLang engines on H100: the figures `s2l plan`'s rollout-time
model (rollout_time.py) divides decode tokens by, their sources, the model that derives the figures
no benchmark publishes and scales any figure to an engine's TP, memory and context, and the
calibration file `s2l bench rollout --measured` writes to replace them (docs/rollout_compute.md).

The reference setting of every figure in THROUGHPUT: output tokens/s per GPU of one engine on one
H100 SXM 80GB, bf16, TP 1, weights + KV cache in a pool of REFERENCE_POOL_GIB (67.0 GiB: what
the measured run below got from `--gpu-memory-utilization 0.9`), prompts of 2,048 and responses of
2,048 tokens, so a decode step attends over 3,071.5 keys on average (`mean_keys`), and as many
sequences decoding at once as the KV cache holds (a rollout sends more requests than that).

Sources:
- Qwen3-8B, measured: 3,917 output tokens/s with 128 requests at once (3,881 and 3,901 at 256 and
  512): vLLM 0.30.0, one H100 80GB (GCP a3-highgpu-1g), bf16, TP 1, 377,024 KV tokens; the public
  silybench-data run `20260924T125045Z_h100-80gbx1_qwen3-8b_bf16` (github.com/tgarg01/silybench-data,
  runs/.../result.json, workload balanced-2048-2048). No SGLang figure at these lengths was found;
  on short requests SGLang 0.5.5 served Qwen3-14B on one H100 SXM faster than vLLM 0.11 (4,044 vs
  3,174 output tokens/s, ShareGPT, 1,000 requests at once: GPUStack's performance lab,
  docs/performance-lab/qwen3-14b/h100.md), so a vLLM level is no overestimate for SGLang.
- Every other model, derived: the model below, with the bandwidth fitted to that measurement.

Model. At these contexts decode is bound by memory bandwidth: a step of an engine reads its weights
and the KV cache of every running sequence, and a full cache is the whole pool. Per GPU of an engine
at TP t, with W the weights and kv the KV bytes per token per GPU (memory.kv_bytes_per_token):
    sequences at once = (pool - W/t) / (kv x context)          (all of the engine's, on every GPU)
    step seconds      = max(pool / BANDWIDTH, sequences x FLOPs per token / t / H100_BF16_FLOPS)
    tokens/s per GPU  = sequences / step seconds / t
BANDWIDTH (2.30 TB/s, 69% of the H100's 3.35 TB/s) makes the model give the measured Qwen3-8B
figure at the reference; it then predicts that run's single-request decode at 7.33 ms per token
(measured: 7.00). The FLOP term (at the 989 TFLOP/s dense bf16 peak, `decode_flops_per_token`)
takes under 9% of a step at the reference for every model: it binds only at short contexts.

TP (the assumption): a GPU of a TP-t engine holds 1/t of the weights and of every sequence's KV
cache (KV heads replicated once t exceeds them), so a larger TP leaves more of the pool for the KV
cache; the all-reduces between its GPUs are not counted. A figure measured or tabled at one setting
is scaled to another by the model's ratio (`Throughput.at`), so a calibration keeps the model's
shape and replaces its level.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from megatron_s2l.archs import ModelArch, bundled_names, load_arch
from megatron_s2l.bench.rollout_flops import decode_flops_per_token, mean_keys
from megatron_s2l.plan.memory import GIB, kv_bytes_per_token

H100_BF16_FLOPS = 989.4e12
"""Dense bf16 tensor-core peak of an H100 SXM (NVIDIA's datasheet: 1,979 TFLOP/s with sparsity)."""

_MEASURED_8B = {"tokens_per_s": 3917.07, "kv_tokens": 377_024, "prompt": 2048, "response": 2048}
REFERENCE_TP = 1
REFERENCE_CONTEXT = mean_keys(_MEASURED_8B["prompt"], _MEASURED_8B["response"])
_8B = load_arch("qwen3-8b")
REFERENCE_POOL_GIB = (_8B.param_count() * 2 + _MEASURED_8B["kv_tokens"] * kv_bytes_per_token(_8B, 1)) / GIB
BANDWIDTH = (
    REFERENCE_POOL_GIB * GIB * _MEASURED_8B["tokens_per_s"] / (_MEASURED_8B["kv_tokens"] / REFERENCE_CONTEXT)
)
"""Bytes/s a decode step reads at, fitted to the measured Qwen3-8B figure (module doc)."""

MEASURED_SOURCE = (
    "measured: vLLM 0.30.0, H100 80GB, 128 requests of 2,048 + 2,048 tokens (silybench-data run "
    "20260924T125045Z_h100-80gbx1_qwen3-8b_bf16)"
)
DERIVED_SOURCE = "derived: bandwidth model fitted to the Qwen3-8B measurement (no published H100 figure)"
CALIBRATION_FORMAT = "s2l-rollout-calibration/1"


def decode_rate(arch: ModelArch, tp: int, pool_gib: float, context: float) -> float:
    """Output tokens/s per GPU of an engine of `arch` at TP `tp` whose GPUs each hold `pool_gib` of
    weights + KV cache, decoding at a mean context of `context` keys (the model of the module doc);
    0 when the weights leave no room for a KV cache."""
    pool = pool_gib * GIB
    sequences = (pool - arch.param_count() * 2 / tp) / (kv_bytes_per_token(arch, tp) * context)
    if sequences <= 0:
        return 0.0
    step = max(pool / BANDWIDTH, sequences * decode_flops_per_token(arch, context) / tp / H100_BF16_FLOPS)
    return sequences / step / tp


@dataclass(frozen=True, slots=True)
class Throughput:
    """Output tokens/s per GPU of one model's engines at one setting, and where the figure comes from."""

    tokens_per_s: float
    tp: int
    pool_gib: float
    """Weights + KV cache per GPU."""
    context: float
    """Mean keys a decode step attends over (prompt + half the response)."""
    source: str

    def at(self, arch: ModelArch, tp: int, pool_gib: float, context: float) -> float:
        """This figure moved to another setting by the model's ratio (0 where the model gives 0)."""
        here = decode_rate(arch, self.tp, self.pool_gib, self.context)
        there = decode_rate(arch, tp, pool_gib, context)
        return self.tokens_per_s * there / here if here > 0 else 0.0


def _reference(name: str) -> Throughput:
    if name == "qwen3-8b":
        tokens, source = _MEASURED_8B["tokens_per_s"], MEASURED_SOURCE
    else:
        tokens = decode_rate(load_arch(name), REFERENCE_TP, REFERENCE_POOL_GIB, REFERENCE_CONTEXT)
        source = DERIVED_SOURCE
    return Throughput(tokens, REFERENCE_TP, REFERENCE_POOL_GIB, REFERENCE_CONTEXT, source)


THROUGHPUT: dict[str, Throughput] = {name: _reference(name) for name in bundled_names()}
"""The table: every bundled Qwen3 at the reference setting (docs/rollout_compute.md prints it)."""


def model_key(arch: ModelArch) -> str:
    """The bundled name of `arch`'s architecture (a checkpoint directory of Qwen3-8B-Base is
    `qwen3-8b`), else its own name."""
    shape = [f.name for f in fields(ModelArch) if f.name not in ("name", "max_position_embeddings")]
    for name in bundled_names():
        bundled = load_arch(name)
        if all(getattr(bundled, f) == getattr(arch, f) for f in shape):
            return name
    return arch.name


def throughput_of(arch: ModelArch, calibration: Calibration | None = None) -> Throughput:
    """The figure for `arch`: measured in `calibration`, else the table's, else the model's at the
    reference (an architecture the table does not have)."""
    key = model_key(arch)
    if calibration is not None and key in calibration.models:
        return calibration.models[key]
    if key in THROUGHPUT:
        return THROUGHPUT[key]
    tokens = decode_rate(arch, REFERENCE_TP, REFERENCE_POOL_GIB, REFERENCE_CONTEXT)
    return Throughput(tokens, REFERENCE_TP, REFERENCE_POOL_GIB, REFERENCE_CONTEXT, DERIVED_SOURCE)


# --- calibration ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration:
    """Measured figures (`s2l bench rollout --measured`), by `model_key`."""

    device: str
    gpu_mem_gib: float
    models: dict[str, Throughput]


def write_calibration(path: Path, calibration: Calibration) -> Path:
    models = {
        key: {
            "tokens_per_s_per_gpu": t.tokens_per_s,
            "tp": t.tp,
            "mem_fraction_static": t.pool_gib / calibration.gpu_mem_gib,
            "context_tokens": t.context,
            "source": t.source,
        }
        for key, t in calibration.models.items()
    }
    doc = {
        "format": CALIBRATION_FORMAT,
        "device": calibration.device,
        "gpu_mem_gib": calibration.gpu_mem_gib,
        "models": models,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path


def read_calibration(path: Path) -> Calibration:
    """The calibration in `path`; ValueError naming the file and the field for anything else."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON calibration: {e}") from e

    def field(where: Any, prefix: str, name: str, ok: Any, what: str) -> Any:
        value = where.get(name) if isinstance(where, dict) else None
        if not ok(value):
            raise ValueError(f"{path}: {prefix}{name}: expected {what}, got {value!r}")
        return value

    def positive(value: Any) -> bool:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value) and value > 0

    field(doc, "", "format", lambda v: v == CALIBRATION_FORMAT, repr(CALIBRATION_FORMAT))
    device = field(doc, "", "device", lambda v: isinstance(v, str) and v, "the device's name")
    mem = field(doc, "", "gpu_mem_gib", positive, "GiB > 0")
    entries = field(doc, "", "models", lambda v: isinstance(v, dict) and v, "a non-empty mapping")
    models = {}
    for key, entry in entries.items():
        at = f"models.{key}."
        tokens = field(entry, at, "tokens_per_s_per_gpu", positive, "a number > 0")
        tp = field(
            entry,
            at,
            "tp",
            lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
            "an integer >= 1",
        )
        fraction = field(
            entry, at, "mem_fraction_static", lambda v: positive(v) and v <= 1, "a number in (0, 1]"
        )
        context = field(entry, at, "context_tokens", positive, "a number > 0")
        source = field(entry, at, "source", lambda v: isinstance(v, str), "a string")
        models[key] = Throughput(float(tokens), tp, fraction * mem, float(context), source)
    return Calibration(device=device, gpu_mem_gib=float(mem), models=models)
