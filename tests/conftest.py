"""Shared test set-up. CPU-only by default: GPU tests carry @pytest.mark.gpu and skip without CUDA."""

import os

import torch

# Triton kernels run in Triton's interpreter on CPU tensors when there is no GPU. The variable must
# be set before any kernel module is imported (triton.jit reads it at decoration time).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

# Fixtures that start SGLang servers: a test that uses one is marked `sglang` (as are the files that
# start servers themselves), so that `make test-fast` (-m "not sglang") never waits for a server.
SERVER_FIXTURES = {"rollout_engines", "served", "served_models"}
# Under `pytest -n 2 --dist loadgroup` (make test) the server-backed tests run in two groups, one per
# worker, each starting its session's servers once: the shared `s2l serve` engines (training runs)
# and everything else (the rollout/sync engines and the tests that start their own servers).
SERVED_FIXTURES = {"served", "served_models"}


def xdist_group(item: pytest.Item) -> str:
    declared = item.get_closest_marker("server_group")
    if declared is not None:  # a module with servers of its own may pick its worker (to balance them)
        return declared.args[0]
    if SERVED_FIXTURES & set(getattr(item, "fixturenames", ())):
        return "sglang-served"
    if "sglang" in item.keywords:
        return "sglang-engines"
    # Every other module runs whole in one worker, so its module-scoped fixtures (Megatron ranks,
    # runs) are built once.
    return item.nodeid.split("::")[0]


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups (--dist loadgroup)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SERVER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.sglang)
        item.add_marker(pytest.mark.xdist_group(xdist_group(item)))
    # The two server groups are the longest: first in the queue, so that xdist hands one to each worker
    # at the start (it deals groups round-robin in the order of their first test).
    first = {"sglang-served": 0, "sglang-engines": 1}
    items.sort(key=lambda item: first.get(xdist_group(item), 2))
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's own hook has applied the groups
def pytest_collection_finish(session: pytest.Session) -> None:
    """Fail fast when `--dist loadgroup` did not group the tests (a pytest or pytest-xdist upgrade that
    breaks it would otherwise run the server tests in both workers, each starting its own servers)."""
    if session.config.getoption("dist", "no") != "loadgroup" or not hasattr(session.config, "workerinput"):
        return
    ungrouped = [item.nodeid for item in session.items if "@" not in item.nodeid]
    if ungrouped:
        raise pytest.UsageError(
            f"--dist loadgroup left {len(ungrouped)} tests ungrouped, e.g. {ungrouped[0]}"
        )
