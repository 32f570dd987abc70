"""`conveyor serve` and `conveyor worker` have grpc.aio's poller serve their sockets, set before grpc loads,
and only there."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

import grpc
import pytest

from broker_service import cli


def experiments_after(code: str, **env: str) -> str | None:
    """GRPC_EXPERIMENTS as a fresh interpreter sees it after running `code`."""
    clean = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    show = "import os; print(repr(os.environ.get('GRPC_EXPERIMENTS')))"
    out = subprocess.run([sys.executable, "-c", f"{code}\n{show}"], capture_output=True, text=True, check=True,
                         timeout=60, env={**clean, **env})
    return ast.literal_eval(out.stdout.strip())


MEASURED = cli.grpc_release() in cli.GRPC_VERIFIED_RELEASES


@pytest.mark.skipif(not MEASURED, reason="grpcio release not measured with the experiments off")
def test_the_broker_sets_the_experiments_before_grpc_loads() -> None:
    code = "import sys; from broker_service import cli; assert cli.prefer_poller_io(); assert 'grpc' not in sys.modules"
    assert experiments_after(code) == cli.GRPC_EXPERIMENTS


@pytest.mark.skipif(not MEASURED, reason="grpcio release not measured with the experiments off")
def test_conveyor_worker_sets_them_before_it_loads_the_worker_sdk() -> None:
    code = ("import contextlib, io, sys\n"
            "from broker_service import cli\n"
            "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "    cli.main(['worker', '--help'])\n"
            "assert 'worker_sdk.cli' in sys.modules")
    assert experiments_after(code) == cli.GRPC_EXPERIMENTS
    assert experiments_after(code, GRPC_EXPERIMENTS="") == ""


def test_an_operators_setting_stands_even_when_empty() -> None:
    code = "from broker_service import cli; assert not cli.prefer_poller_io()"
    assert experiments_after(code, GRPC_EXPERIMENTS="") == ""
    assert experiments_after(code, GRPC_EXPERIMENTS="-event_engine_client") == "-event_engine_client"


def test_nothing_is_set_once_grpc_has_loaded() -> None:
    assert experiments_after("import grpc; from broker_service import cli; assert not cli.prefer_poller_io()") is None


def test_the_sdks_leave_grpc_as_it_is() -> None:
    # Their processes may hold sync channels, which on the poller stack read only during calls.
    assert experiments_after("import client_sdk, worker_sdk") is None


def test_the_release_is_read_without_importing_grpc() -> None:
    major, minor = (int(p) for p in grpc.__version__.split(".")[:2])
    assert cli.grpc_release() == (major, minor)


def test_an_unmeasured_release_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRPC_EXPERIMENTS", raising=False)
    monkeypatch.delitem(sys.modules, "grpc")  # as if grpc had not loaded yet (restored after the test)
    monkeypatch.setattr(cli, "GRPC_VERIFIED_RELEASES", frozenset({(0, 1)}))
    assert cli.prefer_poller_io() is False
    assert "GRPC_EXPERIMENTS" not in os.environ
    monkeypatch.setattr(cli, "GRPC_VERIFIED_RELEASES", frozenset({cli.grpc_release()}))
    assert cli.prefer_poller_io() is True
    assert os.environ["GRPC_EXPERIMENTS"] == cli.GRPC_EXPERIMENTS


def test_what_the_broker_runs_with_is_the_environments_else_the_measured_setting(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_EXPERIMENTS", "")
    assert cli.grpc_experiments() == ""
    monkeypatch.delenv("GRPC_EXPERIMENTS")
    assert cli.grpc_experiments() == (cli.GRPC_EXPERIMENTS if MEASURED else None)
    monkeypatch.setattr(cli, "GRPC_VERIFIED_RELEASES", frozenset())
    assert cli.grpc_experiments() is None
