"""`megatron_s2l.compat`: its stand-ins behave, and the megatron-core / torch symbols it replaces
still exist (this test fails when upstream moves them). Needs 0 GPUs.

The global activation is exercised by every multi-rank learner test; here the pieces are checked
locally so this pytest process is not left with the mode active.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from megatron_s2l.compat import CpuRNGStatesTracker, CudaToCpuMode


def test_patched_upstream_symbols_still_exist() -> None:
    from megatron.core import tensor_parallel
    from megatron.core.tensor_parallel import random as mcore_random

    assert hasattr(mcore_random, "_CUDA_RNG_STATE_TRACKER")
    assert hasattr(mcore_random, "_CUDA_RNG_STATE_TRACKER_INITIALIZED")
    assert tensor_parallel.get_cuda_rng_tracker is mcore_random.get_cuda_rng_tracker
    assert callable(torch.cuda.current_device) and callable(torch.cuda.synchronize)
    # The tracker stand-in offers every public method of megatron's tracker that the model uses.
    upstream = {n for n, _ in inspect.getmembers(mcore_random.CudaRNGStatesTracker, inspect.isfunction)}
    ours = {n for n, _ in inspect.getmembers(CpuRNGStatesTracker, inspect.isfunction)}
    assert {"reset", "get_states", "set_states", "add", "fork", "is_initialized"} <= upstream & ours


def test_mode_maps_cuda_devices_and_type_strings() -> None:
    with CudaToCpuMode():
        a = torch.zeros(3, device="cuda")
        b = torch.empty(2, device=torch.device("cuda", 0))
        c = torch.ones(2, device=0).cuda()
        d = torch.ones(2).to("cuda")
        assert a.type() == "torch.cuda.FloatTensor"
        assert torch.ones(2, dtype=torch.bfloat16).type() == "torch.cuda.BFloat16Tensor"
        e = torch.ones(2).type("torch.cuda.HalfTensor")
    for t in (a, b, c, d, e):
        assert t.device.type == "cpu"
    assert e.dtype == torch.float16
    assert torch.ones(1).type() == "torch.FloatTensor"  # outside the mode: untouched


def test_rng_tracker_forks_and_restores_cpu_state() -> None:
    tracker = CpuRNGStatesTracker()
    tracker.add("model-parallel-rng", 123)
    torch.manual_seed(0)
    outer_expected = torch.rand(3)
    torch.manual_seed(0)
    with tracker.fork():
        first = torch.rand(3)
    assert torch.equal(torch.rand(3), outer_expected)  # the outer stream is untouched
    with tracker.fork():
        second = torch.rand(3)
    assert torch.equal(first, torch.rand(3, generator=torch.Generator().manual_seed(123)))
    assert not torch.equal(first, second)  # the forked stream advances


_ACTIVATION_SCRIPT = """
import torch
from megatron.core import tensor_parallel
from megatron_s2l.compat import activate_cpu_compat, is_cpu_compat_active

assert activate_cpu_compat() and is_cpu_compat_active()
assert torch.zeros(2, device=torch.cuda.current_device()).device.type == "cpu"
torch.cuda.synchronize()
tensor_parallel.model_parallel_cuda_manual_seed(5, tp_rank=0, ep_rank=0, etp_rank=0)
tracker = tensor_parallel.get_cuda_rng_tracker()
with tracker.fork():
    a = torch.rand(3)
expected = torch.rand(3, generator=torch.Generator().manual_seed(5 + 2718))  # megatron's TP seed
assert torch.equal(a, expected), (a, expected)
print("ok")
"""


@pytest.mark.slow  # a fresh interpreter importing megatron-core: ~5-10 s
def test_activation_covers_megatron_seeding_in_a_fresh_process() -> None:
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("the compatibility layer is inactive with CUDA by design")
    proc = subprocess.run(
        [sys.executable, "-c", _ACTIVATION_SCRIPT], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-2000:]
