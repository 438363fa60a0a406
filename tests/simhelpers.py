"""Helpers for tests that run the camera simulator and real ffmpeg clients against it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from campatrol.cameras import Camera
from campatrol.config import Settings
from campatrol.ffmpeg import find_ffmpeg
from campatrol.service import Service
from campatrol.sim import SimCameraConfig, Simulator
from campatrol.web import create_app


@asynccontextmanager
async def running_sim(
    cameras: Iterable[SimCameraConfig], **kwargs: Any
) -> AsyncIterator[Simulator]:
    """Run an in-process simulator (control API on an ephemeral port) for one test."""
    kwargs.setdefault("control_port", 0)
    async with Simulator(list(cameras), **kwargs) as sim:
        yield sim


def ffmpeg_frame_argv(
    url: str, *, socket_timeout: float | None = None, extra_input: Sequence[str] = ()
) -> list[str]:
    """Return an ffmpeg argv that reads one frame over RTSP/TCP and writes it as PNG to stdout."""
    info = find_ffmpeg()
    argv = [info.path, "-hide_banner", "-nostdin", "-loglevel", "error"]
    argv += ["-rtsp_transport", "tcp", *extra_input]
    if socket_timeout is not None:
        argv += [info.rtsp_timeout_option, str(int(socket_timeout * 1_000_000))]
    return [*argv, "-i", url, "-frames:v", "1", "-f", "image2pipe", "-c:v", "png", "-"]


STREAMING: str = "Output #0"
"""What an ffmpeg_stream_argv client prints to stderr once it has probed the stream."""


def ffmpeg_stream_argv(url: str, seconds: float = 60, frames: int | None = None) -> list[str]:
    """Return an ffmpeg argv that reads a stream for `seconds` (or `frames`), discarding it.

    It logs at info level so that a test can wait for STREAMING before acting on it.
    """
    info = find_ffmpeg()
    argv = [info.path, "-hide_banner", "-nostdin", "-loglevel", "info", "-rtsp_transport", "tcp"]
    limit = ["-t", str(seconds)] if frames is None else ["-frames:v", str(frames)]
    return [*argv, "-i", url, *limit, "-c", "copy", "-f", "null", "-"]


@dataclass
class ClientResult:
    """How an ffmpeg client ended; returncode None means the test killed it while it hung."""

    returncode: int | None
    stdout: bytes
    stderr: str
    elapsed: float

    @property
    def hung(self) -> bool:
        """Whether the client was still running when the test's bound ran out."""
        return self.returncode is None

    def image(self) -> Image.Image:
        """Decode the PNG the client wrote."""
        return Image.open(io.BytesIO(self.stdout)).convert("RGB")


class Client:
    """A real client process in its own process group; leaving the block kills and reaps it."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.proc: asyncio.subprocess.Process | None = None
        self._started = 0.0
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._stderr_grew = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Client:
        self._started = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stdout is not None and self.proc.stderr is not None
        loop = asyncio.get_running_loop()
        self._readers = [
            loop.create_task(self._collect(self.proc.stdout, self._stdout)),
            loop.create_task(self._collect(self.proc.stderr, self._stderr)),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.shield(self.kill())

    async def _collect(self, stream: asyncio.StreamReader, sink: bytearray) -> None:
        while chunk := await stream.read(65536):
            sink.extend(chunk)
            if sink is self._stderr:
                self._stderr_grew.set()
        self._stderr_grew.set()

    @property
    def running(self) -> bool:
        """Whether the process has not exited yet."""
        return self.proc is not None and self.proc.returncode is None

    def stderr(self) -> str:
        """What the client wrote to stderr so far."""
        return self._stderr.decode("utf-8", "replace")

    async def wait_for_stderr(self, text: str, within: float) -> None:
        """Wait until the client's stderr contains `text`; AssertionError after `within` s."""
        deadline = time.monotonic() + within
        while text not in self.stderr():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self.running:
                raise AssertionError(f"client did not print {text!r}: {self.stderr()[-1000:]}")
            self._stderr_grew.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stderr_grew.wait(), min(remaining, 0.5))

    async def exits_within(self, within: float) -> bool:
        """Whether the client exits within `within` seconds; a hung client is left running."""
        assert self.proc is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), within)
        except TimeoutError:
            return False
        return True

    async def wait(self, within: float) -> ClientResult:
        """Wait up to `within` seconds; a client still running then is killed and `hung`."""
        assert self.proc is not None
        try:
            await asyncio.wait_for(asyncio.shield(self.proc.wait()), within)
            hung = False
        except TimeoutError:
            hung = True
        await self.kill()
        return ClientResult(
            None if hung else self.proc.returncode,
            bytes(self._stdout),
            self.stderr(),
            time.monotonic() - self._started,
        )

    async def kill(self) -> None:
        """SIGKILL the client's process group (by the pid we started) and reap it."""
        if self.proc is None:
            return
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        await self.proc.wait()
        await asyncio.gather(*self._readers, return_exceptions=True)

    async def terminate(self, grace: float = 5.0) -> None:
        """SIGTERM the client (ffmpeg then sends TEARDOWN), SIGKILL after a grace, and reap."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.proc.wait()), grace)
        await self.kill()


async def run_client(argv: Sequence[str], within: float) -> ClientResult:
    """Run a client to its end, or kill it after `within` seconds (then it counts as hung)."""
    async with Client(argv) as client:
        return await client.wait(within)


async def wait_for(predicate: Any, within: float, interval: float = 0.05) -> None:
    """Poll a condition the simulator exposes no event for; AssertionError after `within` s."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(interval)


_CONTROL_LINE = re.compile(r"control at (http://\S+)")


class SimProcess:
    """`campatrol sim --config FILE` as a child process in its own process group.

    Usable as a context manager (sync or async); on exit it is terminated and reaped by pid.
    """

    def __init__(
        self, config_path: str | Path, *, extra_args: Sequence[str] = (), startup: float = 90.0
    ) -> None:
        self.argv = [sys.executable, "-m", "campatrol", "sim", "--config", str(config_path)]
        self.argv += [*extra_args, "--quiet"]
        self.startup = startup
        self.proc: subprocess.Popen[str] | None = None
        self.control_url = ""
        self._output: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> SimProcess:
        """Start the simulator and wait until its control API answers."""
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        found = threading.Event()
        self._reader = threading.Thread(target=self._read_output, args=(found,), daemon=True)
        self._reader.start()
        try:
            if not found.wait(self.startup):
                raise RuntimeError(f"campatrol sim did not start: {''.join(self._output)[-2000:]}")
            self.cameras()
        except BaseException:
            self.close()
            raise
        return self

    def _read_output(self, found: threading.Event) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._output.append(line)
            match = _CONTROL_LINE.search(line)
            if match and not found.is_set():
                self.control_url = match.group(1)
                found.set()
        found.set()  # the process ended: let start() report it

    @property
    def pid(self) -> int:
        """The simulator's process id."""
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        """Everything the simulator printed so far."""
        return "".join(self._output)

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        if not self.control_url:
            raise RuntimeError(f"campatrol sim is not running: {self.output()[-2000:]}")
        response = httpx.request(method, self.control_url + path, json=body, timeout=30)
        response.raise_for_status()
        return response.json()

    def cameras(self) -> list[dict[str, Any]]:
        """GET /cameras."""
        return self._request("GET", "/cameras")

    def camera(self, camera_id: str) -> dict[str, Any]:
        """GET /cameras/{id}."""
        return self._request("GET", f"/cameras/{camera_id}")

    def set_fault(self, camera_id: str, fault: str, **params: Any) -> dict[str, Any]:
        """POST /cameras/{id}/fault."""
        return self._request("POST", f"/cameras/{camera_id}/fault", {"fault": fault, **params})

    def set_scene(self, camera_id: str, scene: int) -> dict[str, Any]:
        """POST /cameras/{id}/scene; returns once the new scene is being served."""
        return self._request("POST", f"/cameras/{camera_id}/scene", {"scene": scene})

    def reset_counters(self) -> None:
        """POST /reset-counters."""
        self._request("POST", "/reset-counters")

    def close(self, grace: float = 10.0) -> int | None:
        """SIGTERM the simulator's process group, SIGKILL after a grace, reap; return its code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> SimProcess:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc_info: object) -> None:
        await asyncio.to_thread(self.close)


def camera_for(sim: Simulator, camera_id: str, **overrides: Any) -> Camera:
    """The campatrol Camera that reads a simulated camera's main stream at its actual port.

    Credentials and limits are not copied from the simulated camera: a test states what
    campatrol is told, which is the point of tests with wrong passwords or smaller limits.
    """
    sim_camera = sim.camera(camera_id)
    values: dict[str, Any] = {
        "id": camera_id,
        "host": sim_camera.config.host,
        "port": sim_camera.port,
        "path": next(iter(sim_camera.config.paths.values())),
        "brand": "tapo",
        "deadline": 10.0,
    }
    values.update(overrides)
    return Camera(**values)


@asynccontextmanager
async def serving(
    settings: Settings, cameras: Sequence[Camera]
) -> AsyncIterator[tuple[Service, httpx.AsyncClient]]:
    """A started Service with an HTTP client wired to its web app (in process, no socket)."""
    async with Service(settings, cameras) as service:
        transport = httpx.ASGITransport(app=create_app(service))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield service, client
