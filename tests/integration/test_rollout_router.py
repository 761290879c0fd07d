"""`sglang-router` in front of a real server: started, answers /generate like the server, stopped clean."""

from __future__ import annotations

import pytest
from rollout_fixtures import live_group_members
from rollout_reference import engine_greedy

from megatron_s2l.rollout.server import RouterServer

pytestmark = [pytest.mark.slow, pytest.mark.sglang]


def test_router_forwards_to_its_worker_and_stops_by_its_group(rollout_engines, tmp_path) -> None:
    explorer = rollout_engines.explorer.servers[0]
    key = rollout_engines.explorer.api_key  # the router sends it to its worker
    router = RouterServer([explorer.url], tmp_path / "router.log", policy="round_robin", api_key=key)
    with router:
        through_router = engine_greedy(router.url, [11, 12, 13], 6)
        group = router.pid
    direct = engine_greedy(explorer.url, [11, 12, 13], 6)
    assert through_router["output_ids"] == direct["output_ids"]
    assert not router.process.is_running()
    assert live_group_members(group) == []
