"""Broker settings: flags over CONVEYOR_* variables over defaults, and values checked up front."""

from __future__ import annotations

import argparse

import pytest

from broker_service import config
from broker_service.cli import loop_factory
from broker_service.server import BrokerStartError, require_redis


def test_a_flag_wins_over_the_environment_which_wins_over_the_default() -> None:
    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    assert config.load(parser.parse_args([]), {}).event_loop == "auto"
    assert config.load(parser.parse_args([]), {"CONVEYOR_EVENT_LOOP": "asyncio"}).event_loop == "asyncio"
    flagged = config.load(parser.parse_args(["--event-loop", "uvloop"]), {"CONVEYOR_EVENT_LOOP": "asyncio"})
    assert flagged.event_loop == "uvloop"


def test_an_unknown_event_loop_stops_the_broker_before_it_starts() -> None:
    with pytest.raises(SystemExit, match="event loop 'trio': expected one of auto, uvloop, asyncio"):
        config.load(None, {"CONVEYOR_EVENT_LOOP": "trio"})


def test_auto_picks_uvloop_where_it_is_installed_and_asyncio_means_asyncio() -> None:
    uvloop = pytest.importorskip("uvloop")
    assert loop_factory("auto") is uvloop.new_event_loop
    assert loop_factory("uvloop") is uvloop.new_event_loop
    assert loop_factory("asyncio") is None


def test_a_redis_older_than_7_stops_the_broker_before_it_starts() -> None:
    with pytest.raises(BrokerStartError, match=r"Redis 6\.2\.14 is too old: Conveyor needs Redis 7\.0 or newer"):
        require_redis((6, 2, 14))
    for fine in [(7, 0, 0), (7, 0, 15), (7, 2, 4), (8, 0), None]:
        require_redis(fine)
