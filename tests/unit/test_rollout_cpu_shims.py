"""The CPU stand-ins of megatron_s2l/rollout/cpu_shims: fail when upstream SGLang moves.

SGLang's CPU path imports a fixed set of names from `sgl_kernel` at module load; the stand-in must
provide each of them, and the two that run on CPU must compute what SGLang's Triton kernels do.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_s2l.rollout.server import CPU_SHIMS_DIR

SGLANG_ROOT = Path(importlib.util.find_spec("sglang").origin).parent  # type: ignore[union-attr, arg-type]


@pytest.fixture(scope="module")
def shim():
    sys.path.insert(0, str(CPU_SHIMS_DIR))
    try:
        sys.modules.pop("sgl_kernel", None)
        import sgl_kernel

        yield sgl_kernel
    finally:
        sys.path.remove(str(CPU_SHIMS_DIR))
        sys.modules.pop("sgl_kernel", None)


def _sglang_cpu_imports() -> set[str]:
    """Names imported from sgl_kernel directly under an `if _is_cpu:` (or `elif`) anywhere in SGLang."""
    names: set[str] = set()
    for path in [*SGLANG_ROOT.joinpath("srt").rglob("*.py"), *SGLANG_ROOT.joinpath("kernels").rglob("*.py")]:
        text = path.read_text(errors="replace")
        if "sgl_kernel import" not in text or "_is_cpu" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "_is_cpu":
                for statement in node.body:
                    if isinstance(statement, ast.ImportFrom) and statement.module == "sgl_kernel":
                        names |= {alias.name for alias in statement.names}
    return names


def test_shim_provides_every_name_sglang_imports_on_cpu(shim) -> None:
    required = _sglang_cpu_imports()
    assert {"assign_req_to_token_pool_cpu", "copy_all_layer_kv_cache_cpu"} <= required, (
        "SGLang no longer imports the two CPU helpers this shim exists for: revisit cpu_shims/"
    )
    missing = sorted(name for name in required if not hasattr(shim, name))
    assert not missing, f"SGLang now imports {missing} from sgl_kernel on CPU: add stand-ins in cpu_shims/"


def test_assign_req_to_token_pool_matches_reference(shim) -> None:
    req_to_token = torch.zeros(4, 16, dtype=torch.int32)
    rows, starts, ends = torch.tensor([2, 0, 3]), torch.tensor([0, 5, 1]), torch.tensor([3, 7, 5])
    out_cache_loc = torch.randint(1, 1000, (int((ends - starts).sum()),), dtype=torch.int64)
    expected = req_to_token.clone()
    read = 0
    for row, start, end in zip(rows.tolist(), starts.tolist(), ends.tolist(), strict=True):
        expected[row, start:end] = out_cache_loc[read : read + end - start].to(torch.int32)
        read += end - start
    shim.assign_req_to_token_pool_cpu(rows, req_to_token, starts, ends, out_cache_loc, 16)
    assert torch.equal(req_to_token, expected)


def test_copy_all_layer_kv_cache_moves_slots_in_every_buffer(shim) -> None:
    buffers = [torch.randn(10, 3, 4), torch.randn(10, 3, 4)]  # (slots, heads, head_dim) per layer
    tgt, src = torch.tensor([1, 2, 7]), torch.tensor([2, 5, 1])  # overlapping: slot 2 read and written
    expected = [b.clone() for b in buffers]
    for e in expected:
        e[tgt] = e[src].clone()
    data_ptrs = torch.tensor([b.data_ptr() for b in buffers], dtype=torch.uint64)
    strides = torch.tensor([b[0].numel() * b.element_size() for b in buffers], dtype=torch.int64)
    shim.copy_all_layer_kv_cache_cpu(data_ptrs, strides, tgt, src)
    for got, want in zip(buffers, expected, strict=True):
        assert torch.equal(got, want)


def test_speculative_placeholders_refuse_clearly(shim) -> None:
    with pytest.raises(NotImplementedError, match="speculative"):
        shim.build_tree_kernel_efficient_cpu()


def test_sglang_still_asks_for_spawn_and_the_server_hook_forks_instead() -> None:
    """The hook replaces exactly SGLang's one call (`mp.set_start_method("spawn", force=True)` in
    engine.py, before it starts its scheduler and detokenizer): in a process with the shims on its
    path a spawn request gives fork, other methods pass through, and a child started after it shares
    the parent's imports (a module imported only by the parent is already there)."""
    engine = (SGLANG_ROOT / "srt" / "entrypoints" / "engine.py").read_text()
    calls = [
        node
        for node in ast.walk(ast.parse(engine))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "set_start_method"
    ]
    assert [ast.unparse(c) for c in calls] == ["mp.set_start_method('spawn', force=True)"]
    probe = (
        "import multiprocessing as mp, sys\n"
        "mp.set_start_method('spawn', force=True); first = mp.get_start_method()\n"
        "import colorsys  # imported here only: a spawned child would not have it\n"
        "q = mp.Queue(); p = mp.Process(target=lambda: q.put('colorsys' in sys.modules)); p.start()\n"
        "child_has_it = q.get(timeout=60); p.join()\n"
        "mp.set_start_method('forkserver', force=True)\n"
        "print(first, child_has_it, mp.get_start_method())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(CPU_SHIMS_DIR)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["fork", "True", "forkserver"]
