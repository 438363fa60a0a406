"""Run a Service and its HTTP server in one event loop, and stop both cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence

import uvicorn

from campatrol.cameras import Camera
from campatrol.config import ConfigProblem, Settings
from campatrol.errors import CampatrolError
from campatrol.procgroups import become_subreaper
from campatrol.service import Service
from campatrol.web.app import create_app

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: `serve` owns SIGINT/SIGTERM for the process."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]
        yield


async def serve(
    settings: Settings,
    cameras: Sequence[Camera],
    problems: Sequence[ConfigProblem] = (),
    *,
    until: Callable[[], Awaitable[None]] | None = None,
    on_ready: Callable[[Service], None] | None = None,
    sweep_orphans: bool = True,
) -> None:
    """Patrol and serve until SIGINT/SIGTERM, or until the `until` coroutine returns.

    On the way out the HTTP server stops, every patrol is cancelled (which kills and reaps
    their processes), and the supervisor ends whatever child is left before this returns.
    `sweep_orphans` is the Service's start-up sweep of a dead instance's orphans.
    Raises CampatrolError when the HTTP port cannot be bound.
    """
    sock = _bind(settings.listen, settings.port)
    # Grandchildren that escape their group (setsid) and outlive their parent are re-parented
    # to this server instead of init, so the supervisor's watchdog sees and reaps them.
    become_subreaper()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with Service(settings, cameras, problems, sweep_orphans=sweep_orphans) as service:
            config = uvicorn.Config(
                create_app(service), log_config=None, access_log=False, lifespan="off"
            )
            server = _Server(config)
            async with asyncio.TaskGroup() as tg:
                patrols = tg.create_task(service.run(), name="service")
                http = tg.create_task(server.serve(sockets=[sock]), name="http")
                waiters = [tg.create_task(stop.wait(), name="signal")]
                if until is not None:
                    waiters.append(tg.create_task(until(), name="until"))
                log.info("serving http://%s:%s/", _url_host(settings.listen), settings.port)
                if on_ready is not None:
                    on_ready(service)
                await asyncio.wait([http, patrols, *waiters], return_when=asyncio.FIRST_COMPLETED)
                log.info("stopping: ending patrols and their processes")
                server.should_exit = True
                for task in (patrols, *waiters):
                    task.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        sock.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=128)
    except OSError as exc:
        raise CampatrolError(
            f"cannot serve HTTP on {_url_host(host)}:{port}: {exc.strerror}"
        ) from None


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
