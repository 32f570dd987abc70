"""The broker caps glibc's malloc arenas itself (its RSS stays flat as queues grow)."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="malloc arenas are glibc's")
def test_the_arena_cap_is_set_in_a_fresh_process_unless_the_environment_sets_one() -> None:
    code = "from broker_service.cli import limit_malloc_arenas; print(limit_malloc_arenas())"
    env_free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin"})
    explicit = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PATH": "/usr/bin:/bin", "MALLOC_ARENA_MAX": "4"})

    assert env_free.stdout.strip() == "True"
    assert explicit.stdout.strip() == "False"  # the operator's setting wins

