"""The only place where megatron-s2l works around megatron-core 0.16.1: on machines without CUDA
(below), and two defects of its distributed-optimizer checkpoint state (the last two functions,
used by `megatron_s2l.learner.checkpoint` on every machine).

megatron-core assumes a GPU in a few places even when every tensor it touches lives on the CPU.
`activate_cpu_compat()` (called by `megatron_s2l.learner.parallel.init_distributed`, a no-op when
CUDA is available) covers exactly these assumptions, and nothing else:

1. `torch.cuda.current_device()` used as a device argument (pipeline schedules, DDP buffers,
   optimizer): replaced by a stand-in returning 0 (which 3. maps to the CPU).
2. `torch.cuda.synchronize()` (timers, optimizer): replaced by a no-op.
3. Tensors created or moved with `device="cuda"`, `device=torch.device("cuda", i)`, an integer
   device index, or `tensor.cuda()`: a `torch.overrides.TorchFunctionMode` (`CudaToCpuMode`) rewrites
   those device arguments to "cpu" for every torch function call.
4. Dtype checks of the form `param.type() == "torch.cuda.FloatTensor"` (optimizer, grad clipping):
   the same mode answers `tensor.type()` (no argument) with the CUDA type string of the CPU tensor
   (`torch.FloatTensor` -> `torch.cuda.FloatTensor`), and maps `tensor.type("torch.cuda.X")` to the
   CPU type.
5. The CUDA RNG tracker (`tensor_parallel.get_cuda_rng_tracker().fork()` around dropout and weight
   init): megatron's tracker singleton (`tensor_parallel.random._CUDA_RNG_STATE_TRACKER`) is set to a
   `CpuRNGStatesTracker` that forks the CPU generator's state instead of CUDA's.

`tests/unit/test_learner_compat.py` fails if upstream moves any of these symbols.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_ACTIVE_MODE: TorchFunctionMode | None = None


def _is_cuda_device(device: Any) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


def _cpu_type_name(type_name: str) -> str:
    return type_name.replace("torch.cuda.", "torch.")


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to the CPU and answers `.type()` with CUDA type strings."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type:
            if len(args) == 1 and "dtype" not in kwargs:
                return func(*args, **kwargs).replace("torch.", "torch.cuda.", 1)
            if len(args) > 1 and isinstance(args[1], str):
                args = (args[0], _cpu_type_name(args[1]), *args[2:])
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


class CpuRNGStatesTracker:
    """Named CPU RNG states with the interface megatron's `CudaRNGStatesTracker` exposes."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.states_: dict[str, torch.Tensor] = {}
        self.seeds_: set[int] = set()
        self._is_initialized = False

    def is_initialized(self) -> bool:
        return self._is_initialized

    def get_states(self) -> dict[str, torch.Tensor]:
        return dict(self.states_)

    def set_states(self, states: dict[str, torch.Tensor]) -> None:
        self._is_initialized = True
        self.states_ = states

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_ or name in self.states_:
            raise ValueError(f"RNG state {name!r} or seed {seed} already registered")
        self._is_initialized = True
        self.seeds_.add(seed)
        self.states_[name] = torch.Generator().manual_seed(seed).get_state()

    @contextlib.contextmanager
    def fork(self, name: str = "model-parallel-rng") -> Iterator[None]:
        if name not in self.states_:
            raise KeyError(f"RNG state {name!r} is not added")
        outer_state = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(outer_state)


def activate_cpu_compat() -> bool:
    """Activate the CPU stand-ins once per process when CUDA is absent; returns whether active."""
    global _ACTIVE_MODE
    if torch.cuda.is_available():
        return False
    if _ACTIVE_MODE is not None:
        return True
    from megatron.core.tensor_parallel import random as mcore_random

    torch.cuda.current_device = lambda: 0
    torch.cuda.synchronize = lambda device=None: None
    mcore_random._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mcore_random._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    _ACTIVE_MODE = CudaToCpuMode()
    _ACTIVE_MODE.__enter__()
    return True


def is_cpu_compat_active() -> bool:
    return _ACTIVE_MODE is not None


# Checkpoint-state defects of megatron-core 0.16.1 (on every machine, GPU included).


def mark_unpadded_param_state(param_state: dict) -> dict:
    """NOTE: megatron-core 0.16.1's `load_parameter_state_from_dp_reshardable` reads a `padding` flag
    per parameter entry that its own `get_parameter_state_dp_reshardable` does not write (its
    dist-checkpointing path adds it); every entry the getter returns is a real parameter."""
    for key, dtype_state in param_state.items():
        if isinstance(key, int):
            for buckets in dtype_state.values():
                for bucket in buckets:
                    for entry in bucket:
                        entry["padding"] = False
    return param_state


def unshare_adam_steps(optimizer) -> None:
    """NOTE: with torch's Adam (no Apex/TE), megatron-core 0.16.1's DistributedOptimizer.load_state_dict
    puts ONE `step` tensor into every parameter's state; torch's foreach Adam then increments it once
    per parameter per step, corrupting bias correction. Give each parameter its own copy."""
    for part in getattr(optimizer, "chained_optimizers", [optimizer]):
        for param_state in part.optimizer.state.values():
            if torch.is_tensor(param_state.get("step")):
                param_state["step"] = param_state["step"].clone()
