"""Start-up hook of a CPU SGLang server child (see README.md beside this file): lets PyPI's
torchvision import, and forks the server's processes instead of spawning them.

PyPI's torchvision is a CUDA build: on the CPU torch it fails at import with
`operator torchvision::nms does not exist`, because its Python side registers fake kernels for ops
its (unloadable) C++ library would have declared. Declaring the two op schemas first lets it import.
Only done when torchvision is installed, so a server without it is untouched.
"""

import importlib.util

if importlib.util.find_spec("torchvision") is not None:
    import torch

    _TORCHVISION_OPS = torch.library.Library("torchvision", "FRAGMENT")
    _TORCHVISION_OPS.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_OPS.define(
        "qnms(Tensor dets, Tensor scores, float iou_threshold, float scale, int zero_point) -> Tensor"
    )

# SGLang starts its scheduler and detokenizer processes after `mp.set_start_method("spawn",
# force=True)` (sglang/srt/entrypoints/engine.py), so each re-imports torch, transformers and SGLang:
# 15-25 s of a CPU server's start-up on one core. A CPU server holds no CUDA context, the one reason
# for spawn, so its children are forked from the imports already done (measured on the 2-core
# machine, one server on one core: 49-59 s -> 26-33 s to healthy, the same greedy output).
import multiprocessing

_set_start_method = multiprocessing.set_start_method


def _fork_instead_of_spawn(method: str | None, force: bool = False) -> None:
    _set_start_method("fork" if method == "spawn" else method, force=force)


multiprocessing.set_start_method = _fork_instead_of_spawn
