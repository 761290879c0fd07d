"""The learner's side of colocated mode (`rollout.colocate`): its optimizer state exists before the
engines start, and (`learner.offload_during_rollout`) its gradients and optimizer state leave the
GPU while the colocated engines generate.

Why (read in SGLang 0.5.23): an engine sizes its memory pool once, at start-up, from the
GPU memory free then (`KVCacheConfigurator._profile_available_bytes`: KV budget = free memory
after its weights - (free memory before them) x (1 - mem_fraction_static)). Megatron's Adam creates
its moments lazily, at the first optimizer step, i.e. after the engines measured: 8 bytes per
parameter (sharded over DP) that the engines' headroom never counted. So the state is created here,
before the engines start (`init_optimizer_state`), and counted by them (and by `s2l plan`).

What `LearnerOffload` moves, and why not the parameters: the gradient buffers (Megatron DDP's fp32
`grad_data`, 4 bytes per parameter, the largest part) hold nothing between steps (every train step
zeroes them first), so their memory is freed and given back without a copy; the optimizer state
(fp32 master weights and Adam moments) is copied to pinned host memory and back. The bf16
parameters stay on the GPU: the weight sync reads them after training and the run checkpoint is
saved from them after the KV cache is back. slime (`slime/backends/megatron_utils/actor.py`:
`sleep` / `wake_up`) pauses the whole Megatron process with `torch_memory_saver` (CPU backup on,
`slime/ray/actor_group.py`: `TMS_INIT_ENABLE_CPU_BACKUP`) and sends weights from a host copy
(`TensorBackuper`); here the saving is narrower, needs no preloaded allocator hook, and runs on CPU.

The order at each phase boundary (`megatron_s2l.rollout.colocate.Colocation` calls these):
    engines released -> reload()          log-probs, training
    offload() -> engines resume weights   weight sync (reads the parameters)
    engines resume the KV cache           rollout (gradients and optimizer state on the host)
"""

from __future__ import annotations

import logging
import time

import torch

logger = logging.getLogger(__name__)


def optimizer_parts(optimizer) -> list:
    """Megatron's optimizer, or the parts of a chained one (one per parameter group kind)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def init_optimizer_state(optimizer) -> int:
    """Create the Adam moments now rather than at the first step (what Megatron does before loading a
    checkpoint: `MixedPrecisionOptimizer.state_dict(is_loading=True)` -> `init_state_fn`); returns the
    bytes created on this rank. torch's Adam (CPU, no TE / apex) also needs its `step` entry, which
    Megatron's init leaves to the checkpoint; it is added as torch's own lazy init makes it."""
    created = 0
    for part in optimizer_parts(optimizer):
        inner, init = getattr(part, "optimizer", None), getattr(part, "init_state_fn", None)
        if inner is None or init is None:
            continue
        before = _state_bytes(inner)
        init(inner, getattr(part, "config", None))
        if isinstance(inner, torch.optim.Adam | torch.optim.AdamW):
            for state in inner.state.values():
                state.setdefault("step", torch.tensor(0.0, dtype=torch.float32))
        created += _state_bytes(inner) - before
    return created


def _state_bytes(inner: torch.optim.Optimizer) -> int:
    return sum(
        t.numel() * t.element_size() for s in inner.state.values() for t in s.values() if torch.is_tensor(t)
    )


class LearnerOffload:
    """Frees the DDP gradient buffers and moves the optimizer state to (pinned) host memory, and
    back. Works on CPU too (there "the host" is a second CPU copy), so the bookkeeping is tested
    with real Megatron; the memory saved is only measurable on a GPU (tools/gpu_check.sh)."""

    def __init__(self, model: torch.nn.Module, optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.offloaded = False
        self._host: dict[tuple[int, str], torch.Tensor] = {}
        """Pinned host buffers, kept from one step to the next (pinning is slow: allocate once)."""
        self.seconds: dict[str, float] = {}

    def _grad_buffers(self) -> list[torch.Tensor]:
        """The DDP buffers' fp32 gradient tensors that do not share memory with the parameters."""
        buffers = [*getattr(self.model, "buffers", []), *getattr(self.model, "expert_parallel_buffers", [])]
        grads = []
        for buffer in buffers:
            param_data = getattr(buffer, "param_data", None)
            shared = param_data is not None and param_data.untyped_storage().data_ptr() == (
                buffer.grad_data.untyped_storage().data_ptr()
            )
            if not shared:  # a shared param/grad buffer (MXFP8) holds the weights: keep it
                grads.append(buffer.grad_data)
        return grads

    def _model_storages(self) -> set[int]:
        return {p.untyped_storage().data_ptr() for p in self.model.parameters()}

    def _optimizer_tensors(self) -> list[tuple[tuple[int, str], object, str | None]]:
        """(key, owner, name) of every optimizer-owned tensor: a master parameter (owner = the
        parameter, name None) or a state entry (owner = its state dict). Master parameters that are
        views of the model's own parameters (fp32 runs) are left alone."""
        model = self._model_storages()
        found = []
        for part in optimizer_parts(self.optimizer):
            inner = getattr(part, "optimizer", None)
            if inner is None:
                continue
            for group in inner.param_groups:
                for param in group["params"]:
                    if param.untyped_storage().data_ptr() not in model:
                        found.append(((id(param), ""), param, None))
                    for name, value in inner.state.get(param, {}).items():
                        if torch.is_tensor(value) and value.dim() > 0:
                            found.append(((id(param), name), inner.state[param], name))
        return found

    def offload(self) -> None:
        """After training (every rank): gradients freed, optimizer state to the host."""
        if self.offloaded:
            return
        started = time.perf_counter()
        for grad in self._grad_buffers():
            grad.untyped_storage().resize_(0)
        pin = torch.cuda.is_available()
        for key, owner, name in self._optimizer_tensors():
            device_tensor = owner.data if name is None else owner[name]
            host = self._host.get(key)
            if host is None or host.shape != device_tensor.shape or host.dtype != device_tensor.dtype:
                host = self._host[key] = torch.empty(
                    device_tensor.shape, dtype=device_tensor.dtype, device="cpu", pin_memory=pin
                )
            host.copy_(device_tensor, non_blocking=pin)
            self._set(owner, name, host)
        if pin:
            torch.cuda.synchronize()  # the copies are done before their device memory is reused
        self.offloaded = True
        self.seconds["offload"] = time.perf_counter() - started

    def reload(self, device: torch.device | None = None) -> None:
        """Before the log-probs (every rank): optimizer state back on the device, gradient buffers
        re-allocated and zeroed."""
        if not self.offloaded:
            return
        started = time.perf_counter()
        device = device or _learner_device(self.model)
        for grad in self._grad_buffers():
            grad.untyped_storage().resize_(grad.numel() * grad.element_size())
            grad.zero_()
        for _, owner, name in self._optimizer_tensors():
            host = owner.data if name is None else owner[name]
            self._set(owner, name, host.to(device, non_blocking=True, copy=True))
        self.offloaded = False
        self.seconds["reload"] = time.perf_counter() - started

    @staticmethod
    def _set(owner, name: str | None, tensor: torch.Tensor) -> None:
        if name is None:
            owner.data = tensor
        else:
            owner[name] = tensor


def _learner_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def prepare_learner_for_colocation(learner, *, colocate: bool, offload: bool) -> LearnerOffload | None:
    """Every rank, before the driver starts the engines: the optimizer state is created (so the
    engines see the learner's whole resident state when they size their memory), and, with
    `offload` (`learner.offload_during_rollout`), the gradients and optimizer state go to the host
    until the first rollout is over. Returns the offloader `Colocation` drives (None without it)."""
    if not colocate:
        return None
    import torch.distributed as dist

    created = init_optimizer_state(learner.optimizer)
    offloader = LearnerOffload(learner.model, learner.optimizer) if offload else None
    if offloader is not None:
        offloader.offload()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()  # no rank may still allocate once the driver's engines measure free memory
    logger.info(
        "colocate: optimizer state created before the engines start (%.2f GiB on this rank)%s",
        created / 2**30,
        "; gradients and optimizer state offloaded to host memory during rollouts" if offloader else "",
    )
    return offloader
