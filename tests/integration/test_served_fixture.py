"""The shared `s2l serve` engines (served_fixtures.py) find what a test left behind: another weight
version, a request still running, a dead `s2l serve`; and repair it (base weights reloaded, the
process restarted), so that a failing test does not fail the tests after it."""

from __future__ import annotations

import os
import threading
import time
from signal import SIGKILL

import httpx
import pytest
from served_fixtures import ServedModel

pytestmark = [pytest.mark.slow, pytest.mark.sglang]


def test_a_changed_weight_version_is_found_and_the_base_weights_reloaded(served_models) -> None:
    learner: ServedModel = served_models["learner"]
    url = learner.urls[1]
    assert learner.problem() is None
    response = httpx.post(url + "/update_weight_version", json={"new_version": "7"}, timeout=30)
    assert response.status_code == 200, response.text
    assert learner.problem() == f"{url} holds weight version '7', not the base weights"
    learner.load_base_weights()
    assert learner.problem() is None


def test_a_request_in_flight_is_found(served_models) -> None:
    explorer: ServedModel = served_models["explorer"]
    url = explorer.urls[0]
    payload = {
        "input_ids": [1, 2, 3, 4],
        "sampling_params": {"temperature": 0.0, "max_new_tokens": 400, "ignore_eos": True},
    }
    done = threading.Event()

    def keep_generating() -> None:  # one long request after another, until the check has seen one
        while not done.is_set():
            httpx.post(url + "/generate", json=payload, timeout=300)

    requests = threading.Thread(target=keep_generating)
    requests.start()
    try:
        deadline = time.monotonic() + 120
        while (problem := explorer.problem()) is None:
            assert time.monotonic() < deadline, "no request ever seen in flight"
            time.sleep(0.05)
        assert problem == f"{url} has requests in flight"
    finally:
        done.set()
        requests.join(timeout=300)
    assert explorer.problem() is None  # finished: idle again


def test_a_dead_server_is_found_and_restarted(served_models) -> None:
    explorer: ServedModel = served_models["explorer"]
    os.killpg(explorer.proc.pid, SIGKILL)
    explorer.proc.wait(timeout=30)
    assert explorer.problem() == "s2l serve is not running"
    restarts = explorer.restarts
    explorer.restart()
    assert explorer.restarts == restarts + 1 and explorer.problem() is None
