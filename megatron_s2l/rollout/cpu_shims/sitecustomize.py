"""Start-up hook of a CPU SGLang server child (see README.md beside this file).

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
