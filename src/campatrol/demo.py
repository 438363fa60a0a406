"""`campatrol demo`: simulated cameras on two loopback subnets, patrolled and served."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from pathlib import Path
from typing import Final

from rich.console import Console

from campatrol.cameras import Camera
from campatrol.config import Settings
from campatrol.errors import CampatrolError
from campatrol.server import serve
from campatrol.sim import SimCameraConfig, Simulator

SUBNETS: Final = 2
PER_SUBNET: Final = 6
HANGING: Final = "s1c6"  # answers TCP, then never says a word
WRONG_PASSWORD: Final = "s2c6"  # campatrol is configured with a password the camera rejects


def demo_cameras() -> list[SimCameraConfig]:
    """Twelve small Tapo-like cameras at 127.0.1.1-6 and 127.0.2.1-6, two of them faulty."""
    cameras = []
    for s in range(1, SUBNETS + 1):
        for h in range(1, PER_SUBNET + 1):
            cam_id = f"s{s}c{h}"
            cameras.append(
                SimCameraConfig(
                    id=cam_id,
                    name=f"Demo {s}-{h}",
                    host=f"127.0.{s}.{h}",
                    port=8554,
                    paths={"main": "/stream1", "sub": "/stream2"},
                    width=640,
                    height=360,
                    fps=10,
                    gop=10,
                    auth="digest" if cam_id == WRONG_PASSWORD else "none",
                    username="admin" if cam_id == WRONG_PASSWORD else "",
                    password="right horse" if cam_id == WRONG_PASSWORD else "",
                    max_sessions=2,
                    scene=h,
                    label=f"Demo {s}-{h}",
                    fault="hang_after_accept" if cam_id == HANGING else None,
                )
            )
    return cameras


def patrol_cameras(sims: list[SimCameraConfig], deadline: float) -> list[Camera]:
    """The campatrol view of the simulated cameras (with the one wrong password)."""
    return [
        Camera(
            id=sim.id,
            name=sim.name,
            host=sim.host,
            port=sim.port,
            path=sim.paths["main"],
            username=sim.username,
            password="wrong horse" if sim.id == WRONG_PASSWORD else sim.password,
            brand="tapo",
            max_sessions=sim.max_sessions,
            transport="tcp",
            deadline=deadline,
            subnet=f"127.0.{sim.host.split('.')[2]}.0/24",
            enabled=True,
            hold_after_kill=0.0,
        )
        for sim in sims
    ]


async def run_demo(
    *, port: int, duration: float | None, data_dir: Path | None, console: Console
) -> None:
    """Run the simulator and a patrolling server until interrupted or `duration` passes."""
    with tempfile.TemporaryDirectory(prefix="campatrol-demo-") as tmp:
        data = data_dir or Path(tmp)
        settings = Settings(
            listen="127.0.0.1",
            port=port,
            data_dir=str(data),
            deadline=5.0,
            interval=10.0,
            cooldown=2.0,
        )
        sims = demo_cameras()
        async with contextlib.AsyncExitStack() as stack:
            try:
                sim = await stack.enter_async_context(
                    Simulator(sims, control_host="127.0.0.1", control_port=0)
                )
            except OSError as exc:
                raise CampatrolError(
                    f"{exc.strerror}; the demo's cameras need 127.0.1.1-6 and 127.0.2.1-6 "
                    "port 8554 (is another demo or simulator running?)"
                ) from None
            cameras = patrol_cameras(sims, settings.deadline)

            def announce(_service: object) -> None:
                console.print(f"campatrol demo: dashboard  http://127.0.0.1:{port}/")
                console.print(f"               API docs   http://127.0.0.1:{port}/docs")
                console.print(f"               simulator  {sim.control_url}/cameras")
                console.print(f"               data       {data}")
                console.print(
                    f"               faulty     {HANGING} hangs after accept, "
                    f"{WRONG_PASSWORD} has a wrong password"
                )
                console.print("Press Ctrl-C to stop.")

            until = (lambda: asyncio.sleep(duration)) if duration else None
            # The demo is a toy: it leaves the host-wide sweep of a dead instance's orphans to
            # `campatrol run`, so trying it never ends a process it did not start.
            await serve(settings, cameras, until=until, on_ready=announce, sweep_orphans=False)
