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
    "ignore_index": "i32",
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


def compile_kernel(
    fn,
    signature: dict[str, str],
    constexprs: dict[str, object],
    cc: int,
    num_warps: int,
    aligned: tuple[str, ...] = (),
) -> dict[str, str]:
    """triton.compile of one specialisation; `aligned` names the arguments Triton would see as
    divisible by 16 at launch (it specialises pointers and integers that are). Returns the asm."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    names = list(inspect.signature(fn.fn).parameters)
    src = ASTSource(
        fn=fn,
        signature={name: signature.get(name, "constexpr") for name in names},
        constexprs={(names.index(name),): value for name, value in constexprs.items()},
        attrs={(names.index(name),): [["tt.divisibility", 16]] for name in aligned},
    )
    compiled = triton.compile(src, target=GPUTarget("cuda", cc, 32), options={"num_warps": num_warps})
    assert compiled.asm["cubin"], fn.fn.__name__
    return compiled.asm


def compile_all() -> list[str]:
    """Compile every launched specialisation for each target; returns one line per kernel."""
    import megatron_s2l.kernels.logprobs as kernels

    def build(fn, signature: dict[str, str], constexprs: dict[str, object], cc: int, num_warps: int) -> str:
        compile_kernel(fn, signature, constexprs, cc, num_warps)
        return f"{fn.fn.__name__} sm_{cc} {constexprs} ok"

    lines = []
    for cc in TARGETS:
        for dtype in ("bf16", "fp32"):
            # A vocab that is not a multiple of the block (a masked tail block) and one that is.
            for block_v, num_warps, has_tail in ((4096, 8, True), (1024, 4, False)):
                for flag in (True, False):
                    fwd_sig = FWD_SIG | {"logits_ptr": f"*{dtype}"}
                    bwd_sig = BWD_SIG | {"logits_ptr": f"*{dtype}", "dlogits_ptr": f"*{dtype}"}
                    fwd_consts = {"BLOCK_V": block_v, "HAS_TAIL": has_tail, "COMPUTE_ENTROPY": flag}
                    bwd_consts = {"BLOCK_V": block_v, "HAS_TAIL": has_tail, "HAS_GRAD_ENTROPY": flag}
                    lines.append(build(kernels._logprobs_fwd_kernel, fwd_sig, fwd_consts, cc, num_warps))
                    lines.append(build(kernels._logprobs_bwd_kernel, bwd_sig, bwd_consts, cc, num_warps))
        for flag in (True, False):
            consts = {"BLOCK_T": kernels.BLOCK_T, "COMPUTE_ENTROPY": flag}
            lines.append(build(kernels._logprobs_combine_kernel, COMBINE_SIG, consts, cc, 4))
    return lines


def global_memory_ops() -> list[str]:
    """The distinct global loads / stores in the sm_90 PTX of the forward and backward kernels, for
    a vocab width NOT known to be a multiple of 16 (Qwen3's 151,669) while the logits' pointer and
    row stride are (Megatron pads the shard width to a multiple of 128): one line per kernel."""
    import re

    import megatron_s2l.kernels.logprobs as kernels

    lines = []
    for dtype in ("bf16", "fp32"):
        fwd_sig = FWD_SIG | {"logits_ptr": f"*{dtype}"}
        bwd_sig = BWD_SIG | {"logits_ptr": f"*{dtype}", "dlogits_ptr": f"*{dtype}"}
        fwd_consts = {"BLOCK_V": 4096, "HAS_TAIL": True, "COMPUTE_ENTROPY": True}
        bwd_consts = {"BLOCK_V": 4096, "HAS_TAIL": True, "HAS_GRAD_ENTROPY": True}
        aligned = ("logits_ptr", "dlogits_ptr", "stride_row", "stride_drow")
        for fn, sig, consts in (
            (kernels._logprobs_fwd_kernel, fwd_sig, fwd_consts),
            (kernels._logprobs_bwd_kernel, bwd_sig, bwd_consts),
        ):
            asm = compile_kernel(fn, sig, consts, 90, 8, aligned=tuple(a for a in aligned if a in sig))
            ops = sorted(set(re.findall(r"(?:ld|st)\.global[.\w]*", asm["ptx"])))
            lines.append(f"{fn.fn.__name__} {dtype}: {' '.join(ops)}")
    return lines


def run_child(mode: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9 warns when unset
    proc = subprocess.run(
        [sys.executable, __file__, mode], env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return proc.stdout


def test_kernels_compile_for_gpu_targets() -> None:
    stdout = run_child("all")
    assert stdout.count(" ok") == 2 * (2 * 2 * 2 * 2 + 2), stdout


def test_full_vocab_blocks_compile_to_vector_memory_ops() -> None:
    """With the vocab bound 151,669 (not a multiple of 16), the logits are still read and dlogits
    written with 16-byte vector ops (ld/st.global.v4): only the tail block is masked by that bound.
    Masking every block by it leaves scalar ops only (ld.global.b16 for bf16)."""
    lines = run_child("vector").splitlines()
    assert len(lines) == 4, lines
    for line in lines:
        assert "ld.global.v4" in line, line
        if "_bwd_" in line:
            assert "st.global.v4" in line, line


if __name__ == "__main__":
    print("\n".join(global_memory_ops() if sys.argv[1:] == ["vector"] else compile_all()))
