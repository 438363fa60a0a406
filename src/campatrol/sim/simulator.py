"""The simulator: many cameras and a control API in one asyncio event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from campatrol.sim.camera import SimCamera
from campatrol.sim.clips import ClipCache
from campatrol.sim.config import SimCameraConfig
from campatrol.sim.control import handle_control

logger = logging.getLogger(__name__)


def raise_open_file_limit() -> None:
    """Raise the soft RLIMIT_NOFILE to the hard limit: each camera holds a listening socket."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Simulator:
    """Runs simulated cameras and their control API; `async with` binds and closes everything.

    ```
    async with Simulator([SimCameraConfig(id="cam1", host="127.0.1.1", port=0)]) as sim:
        url = sim.camera("cam1").url()
    ```
    """

    def __init__(
        self,
        cameras: Iterable[SimCameraConfig],
        control_host: str = "127.0.0.1",
        control_port: int | None = 0,
        *,
        cache_dir: Path | None = None,
    ) -> None:
        configs = list(cameras)
        ids = [config.id for config in configs]
        if len(set(ids)) != len(ids):
            raise ValueError("sim: camera ids must be unique")
        self._configs = configs
        self._control_host = control_host
        self._control_port = control_port
        self._cache_dir = cache_dir
        self._cameras: dict[str, SimCamera] = {}
        self._clips: ClipCache | None = None
        self._control: asyncio.Server | None = None
        self._control_connections: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.aclose())

    async def start(self) -> None:
        """Encode (or load) every clip, bind every camera, then the control API.

        Raises OSError when an address is taken; whatever was bound is closed again.
        """
        raise_open_file_limit()
        self._clips = ClipCache(self._cache_dir)
        try:
            for config in self._configs:
                self._cameras[config.id] = SimCamera(config, self._clips)
            specs = {
                cam.clip_spec(stream)
                for cam in self._cameras.values()
                for stream in cam.config.paths
            }
            await asyncio.gather(*(self._clips.get(spec) for spec in specs))
            for camera in self._cameras.values():
                await camera.start()
            if self._control_port is not None:
                self._control = await asyncio.start_server(
                    lambda reader, writer: handle_control(self, reader, writer),
                    host=self._control_host,
                    port=self._control_port,
                    reuse_address=True,
                )
        except BaseException:
            await asyncio.shield(self.aclose())
            raise
        logger.info("sim: %d cameras up, control at %s", len(self._cameras), self.control_url)

    async def aclose(self) -> None:
        """Close the control API, every camera and every connection, and stop clip encodes."""
        if self._control is not None:
            self._control.close()
            self._control = None
        pending = list(self._control_connections)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await asyncio.gather(*(camera.close() for camera in self._cameras.values()))
        if self._clips is not None:
            await self._clips.aclose()

    def track_control_connection(self, task: asyncio.Task[Any]) -> None:
        """Register a control API connection so that closing the simulator ends it."""
        self._control_connections.add(task)
        task.add_done_callback(self._control_connections.discard)

    @property
    def control_url(self) -> str | None:
        """The control API's base URL (http://host:port), None when it is not running."""
        if self._control is None:
            return None
        host, port = self._control.sockets[0].getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    def camera(self, camera_id: str) -> SimCamera:
        """Return a camera by id; KeyError if there is none."""
        return self._cameras[camera_id]

    def cameras(self) -> list[SimCamera]:
        """Return every camera in configuration order."""
        return list(self._cameras.values())

    def reset_counters(self) -> None:
        """Zero every camera's counters (peaks restart from the sessions held now)."""
        for camera in self._cameras.values():
            camera.reset_counters()
