"""The simulator's control HTTP API: the oracle tests read and the switches they flip.

A few routes do not justify a web framework; this handler costs nothing while idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from campatrol.sim.simulator import Simulator

logger = logging.getLogger(__name__)

MAX_BODY: Final = 64 * 1024
_CAMERA_ROUTE = re.compile(r"^/cameras/([^/]+)(?:/(fault|scene))?$")
_REASONS: Final = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def handle_control(
    sim: Simulator, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Answer one HTTP/1.1 request and close the connection."""
    task = asyncio.current_task()
    if task is not None:
        sim.track_control_connection(task)
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        method, path, headers = _parse_head(head)
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            raise _HttpError(400, "body too large")
        body = await reader.readexactly(length) if length else b""
        try:
            status, payload = 200, await _route(sim, method, path, body)
        except _HttpError as exc:
            status, payload = exc.status, {"error": str(exc)}
        _write_json(writer, status, payload)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await asyncio.shield(writer.wait_closed())


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return method.upper(), target.split("?", 1)[0], headers


def _write_json(writer: asyncio.StreamWriter, status: int, payload: Any) -> None:
    body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    writer.write(head.encode("ascii") + body)


def _json_object(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except json.JSONDecodeError as exc:
        raise _HttpError(400, f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise _HttpError(400, "body must be a JSON object")
    return data


async def _route(sim: Simulator, method: str, path: str, body: bytes) -> Any:
    if path == "/cameras":
        _require(method, "GET")
        return [camera.stats() for camera in sim.cameras()]
    if path == "/reset-counters":
        _require(method, "POST")
        sim.reset_counters()
        return {"ok": True}
    match = _CAMERA_ROUTE.match(path)
    if match is None:
        raise _HttpError(404, f"no route {path}")
    try:
        camera = sim.camera(match.group(1))
    except KeyError:
        raise _HttpError(404, f"no camera {match.group(1)!r}") from None
    action = match.group(2)
    if action is None:
        _require(method, "GET")
        return camera.stats()
    _require(method, "POST")
    data = _json_object(body)
    if action == "fault":
        params = dict(data)
        name = params.pop("fault", None)
        if not isinstance(name, str):
            raise _HttpError(400, 'body needs "fault": NAME')
        try:
            camera.set_fault(name, **params)
        except ValueError as exc:
            raise _HttpError(400, str(exc)) from exc
        await camera.wait_listening()
        return camera.stats()
    scene = data.get("scene")
    if isinstance(scene, bool) or not isinstance(scene, int) or scene < 0:
        raise _HttpError(400, 'body needs "scene": an integer >= 0')
    camera.set_scene(scene)
    # Answer once the new scene can be streamed, so a capture started after the answer shows it.
    for stream in camera.config.paths:
        await camera.clip(stream)
    return camera.stats()


def _require(method: str, allowed: str) -> None:
    if method != allowed:
        raise _HttpError(405, f"use {allowed}")
