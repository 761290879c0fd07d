"""The Triton kernels compile, ahead of time and without a GPU, to PTX and cubin for Ampere (sm_80)
and Hopper (sm_90): the interpreter runs the kernels' Python, this checks what the compiler
accepts (loop-carried types, constexpr globals, masks), for every specialisation the host
wrappers launch.

    .venv/bin/pytest tests/unit/test_kernels_compile.py -q

NUM_GPUS = 0. The compilation runs in a child process: the interpreter, set for the other tests,
would replace the kernels by their Python functions.
"""

from __future__ import annotations

import inspect
import os
import subprocess
import sys

NUM_GPUS = 0
TARGETS = (80, 90)  # compute capabilities

FWD_SIG = {
    "targets_ptr": "*i64",
    "stats_ptr": "*fp32",
    "vocab": "i32",
    "stride_row": "i64",
    "stride_stat": "i32",
    "vocab_start": "i32",
    "inv_temp": "fp32",
}
BWD_SIG = {
    "targets_ptr": "*i64",
    "lse_ptr": "*fp32",
    "entropy_ptr": "*fp32",
    "grad_logp_ptr": "*fp32",
    "grad_entropy_ptr": "*fp32",
    "num_tokens": "i32",
    "vocab": "i32",
    "stride_row": "i64",
    "stride_drow": "i64",
    "vocab_start": "i32",
    "inv_temp": "fp32",
    "ignore_index": "i32",
}
COMBINE_SIG = {
    "stats_ptr": "*fp32",
    "targets_ptr": "*i64",
    "logp_ptr": "*fp32",
    "entropy_ptr": "*fp32",
    "lse_ptr": "*fp32",
    "num_tokens": "i32",
    "num_ranks": "i32",
    "ignore_index": "i32",
}


def compile_all() -> list[str]:
    """Compile every launched specialisation for each target; returns one line per kernel."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import megatron_s2l.kernels.logprobs as kernels

    def build(fn, signature: dict[str, str], constexprs: dict[str, object], cc: int, num_warps: int) -> str:
        names = list(inspect.signature(fn.fn).parameters)
        src = ASTSource(
            fn=fn,
            signature={name: signature.get(name, "constexpr") for name in names},
            constexprs={(names.index(name),): value for name, value in constexprs.items()},
        )
        compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps})
        assert compiled.asm["cubin"], fn.fn.__name__
        return f"{fn.fn.__name__} sm_{cc} {constexprs} ok"

    lines = []
    for cc in TARGETS:
        for dtype in ("bf16", "fp32"):
            for block_v, num_warps in ((4096, 8), (1024, 4)):
                for flag in (True, False):
                    fwd_sig = FWD_SIG | {"logits_ptr": f"*{dtype}"}
                    bwd_sig = BWD_SIG | {"logits_ptr": f"*{dtype}", "dlogits_ptr": f"*{dtype}"}
                    fwd_consts = {"BLOCK_V": block_v, "COMPUTE_ENTROPY": flag}
                    bwd_consts = {"BLOCK_V": block_v, "HAS_GRAD_ENTROPY": flag}
                    lines.append(build(kernels._logprobs_fwd_kernel, fwd_sig, fwd_consts, cc, num_warps))
                    lines.append(build(kernels._logprobs_bwd_kernel, bwd_sig, bwd_consts, cc, num_warps))
        for flag in (True, False):
            consts = {"BLOCK_T": kernels.BLOCK_T, "COMPUTE_ENTROPY": flag}
            lines.append(build(kernels._logprobs_combine_kernel, COMBINE_SIG, consts, cc, 4))
    return lines


def test_kernels_compile_for_gpu_targets() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset
    proc = subprocess.run(
        [sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    assert proc.stdout.count(" ok") == 2 * (2 * 2 * 2 * 2 + 2), proc.stdout


if __name__ == "__main__":
    print("\n".join(compile_all()))
