"""Shared test set-up. CPU-only by default: GPU tests carry @pytest.mark.gpu and skip without CUDA."""

import os

import torch

# Triton kernels run in Triton's interpreter on CPU tensors when there is no GPU. The variable must
# be set before any kernel module is imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
