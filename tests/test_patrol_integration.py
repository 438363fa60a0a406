"""The main job end to end in one process: a real Service patrols simulated cameras with ffmpeg."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest
from PIL import Image

from campatrol.cameras import Camera
from campatrol.config import Settings
from campatrol.patrol import CaptureOutcome, CycleStats, Patrol
from campatrol.service import Service
from campatrol.sim import SimCameraConfig, Simulator, scene_color, scene_probe_point
from simhelpers import camera_for, running_sim

W, H = 320, 180


def sim_camera(subnet: int, host: int, **overrides: object) -> SimCameraConfig:
    fields: dict[str, object] = {
        "id": f"n{subnet}h{host}",
        "name": f"Net {subnet} host {host}",
        "host": f"127.0.{subnet}.{host}",
        "port": 0,
        "paths": {"main": "/stream1"},
        "width": W,
        "height": H,
        "fps": 10,
        "gop": 10,
        "max_sessions": 2,
        "scene": host,
    }
    fields.update(overrides)
    return SimCameraConfig(**fields)  # type: ignore[arg-type]


def patrol_camera(sim: Simulator, cfg: SimCameraConfig, **overrides: object) -> Camera:
    """The campatrol camera for a simulated one, told the simulator's own credentials."""
    values: dict[str, object] = {
        "name": cfg.name,
        "username": cfg.username,
        "password": cfg.password,
        "max_sessions": cfg.max_sessions,
        "deadline": 2.0,
    }
    values.update(overrides)
    return camera_for(sim, cfg.id, **values)


@asynccontextmanager
async def patrolling(
    tmp_path: Path, cameras: Sequence[Camera], **settings: object
) -> AsyncIterator[Service]:
    values: dict[str, object] = {
        "data_dir": tmp_path / "data",
        "deadline": 2.0,
        "interval": 0.1,
        "cooldown": 0.0,
        "grace": 1.0,
        "slot_wait": 1.0,
    }
    values.update(settings)
    async with Service(Settings(**values), cameras) as service:
        yield service


def decoded(path: Path) -> Image.Image:
    image = Image.open(io.BytesIO(path.read_bytes()))
    image.load()
    return image


def near(rgb: tuple[int, ...], expected: tuple[int, int, int], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(rgb, expected, strict=False))


@pytest.mark.timeout(90)
@pytest.mark.ffmpeg_fallback
async def test_a_cycle_snapshots_healthy_cameras_and_classifies_faulty_ones(tmp_path):
    sims = [
        sim_camera(31, 1),
        sim_camera(31, 2),
        sim_camera(31, 3),
        sim_camera(31, 4, fault="hang_after_accept"),
        sim_camera(31, 5, auth="digest", username="admin", password="right pass"),
    ]
    async with running_sim(sims) as sim:
        cameras = [patrol_camera(sim, cfg) for cfg in sims[:4]]
        cameras.append(patrol_camera(sim, sims[4], password="wrong pass"))
        async with patrolling(tmp_path, cameras) as service:
            (patrol,) = service.patrols.values()
            t0 = time.monotonic()
            stats = await patrol.run_cycle()
            elapsed = time.monotonic() - t0

            assert (stats.visited, stats.succeeded, stats.failed, stats.timed_out) == (5, 3, 2, 1)
            assert stats.leaks == 0
            # One camera at a time: the hanging one costs at most its deadline plus the grace.
            assert elapsed < 3 * 2.0 + 2.0 + 1.0 + 3.0
            for cfg in sims[:3]:
                record = service.store.latest_snapshot(cfg.id)
                assert record is not None
                image = decoded(record.path)
                assert image.format == "JPEG"
                assert image.size == (W, H)
                assert service.health(cfg.id).status == "online"
            assert service.health(sims[3].id).last_error_class == "timeout"
            assert service.health(sims[4].id).last_error_class == "unauthorized"
            assert service.store.latest_snapshot(sims[3].id) is None

            # A snapshot taken after a scene change shows the new scene.
            target = sims[0]
            before = decoded(service.store.latest_snapshot(target.id).path)
            x, y = scene_probe_point(W, H)
            assert near(before.convert("RGB").getpixel((x, y)), scene_color(target.scene))
            sim.camera(target.id).set_scene(target.scene + 1)
            await patrol.run_cycle()
            after = decoded(service.store.latest_snapshot(target.id).path)
            assert near(after.convert("RGB").getpixel((x, y)), scene_color(target.scene + 1))
            assert not near(after.convert("RGB").getpixel((x, y)), scene_color(target.scene))
            assert service.supervisor.children() == []


def ffmpeg_descendants() -> list[psutil.Process]:
    """Every ffmpeg process below this test process: the host's own view, not campatrol's."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if "ffmpeg" in proc.name() and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@pytest.mark.timeout(300)
async def test_the_incident_replayed_never_piles_up_processes_or_sessions(tmp_path):
    """The incident: a 2-session camera that hangs after accept, patrolled for 30 cycles.

    The poller that caused it abandoned each hung ffmpeg and started another every cycle; here
    the camera must never have more than one capture process, the total never grows, the
    camera is never asked for more sessions than it allows, and its neighbours keep working.
    """
    cycles = 30
    sims = [sim_camera(32, 1, fault="hang_after_accept"), sim_camera(32, 2), sim_camera(32, 3)]
    async with running_sim(sims) as sim:
        cameras = [patrol_camera(sim, cfg) for cfg in sims]
        # No backoff: the hanging camera is tried in every cycle, as the incident's poller did.
        async with patrolling(tmp_path, cameras, backoff_base=0.001, backoff_max=0.001) as svc:
            (patrol,) = svc.patrols.values()
            peaks = {"hanging": 0, "registry": 0, "host": 0}
            sampling = True

            async def sample() -> None:
                while sampling:
                    children = svc.supervisor.children()
                    hanging = sum(1 for c in children if c.camera_id == sims[0].id)
                    peaks["hanging"] = max(peaks["hanging"], hanging)
                    peaks["registry"] = max(peaks["registry"], len(children))
                    peaks["host"] = max(peaks["host"], len(ffmpeg_descendants()))
                    await asyncio.sleep(0.05)

            sampler = asyncio.create_task(sample())
            try:
                results = [await patrol.run_cycle() for _ in range(cycles)]
            finally:
                sampling = False
                await sampler

            assert [r.succeeded for r in results] == [2] * cycles
            assert [r.failed for r in results] == [1] * cycles
            assert [r.leaks for r in results] == [0] * cycles
            assert peaks["hanging"] == 1
            assert peaks["registry"] == 1  # one camera at a time in a subnet
            assert peaks["host"] <= 1
            assert ffmpeg_descendants() == []
            for cfg in sims:
                stats = sim.camera(cfg.id).stats()
                assert stats["peak_sessions"] <= cfg.max_sessions, cfg.id
                assert stats["refused"] == 0, cfg.id
                assert stats["sessions"] == 0, cfg.id


@pytest.mark.timeout(60)
async def test_cancelling_a_capture_on_a_hung_camera_ends_its_process_and_frees_the_slot(
    tmp_path,
):
    sims = [sim_camera(33, 1, fault="hang_after_accept")]
    async with running_sim(sims) as sim:
        cameras = [patrol_camera(sim, sims[0], deadline=30.0, max_sessions=1)]
        async with patrolling(tmp_path, cameras, grace=1.0) as service:
            spawned = asyncio.Event()
            service.supervisor.on_event(lambda e: e.kind == "spawned" and spawned.set())
            capture = asyncio.create_task(service.capture_now(sims[0].id))
            await spawned.wait()
            (child,) = service.supervisor.children()
            assert service.slots.in_use(sims[0].id) == 1

            t0 = time.monotonic()
            capture.cancel()
            with pytest.raises(asyncio.CancelledError):
                await capture
            ended_within = time.monotonic() - t0

            assert not psutil.pid_exists(child.pid)
            assert ended_within <= 1.0 + 1.0  # the grace, plus scheduling slack
            assert service.supervisor.children() == []
            assert service.slots.in_use(sims[0].id) == 0


@pytest.mark.timeout(60)
async def test_a_snapshot_that_cannot_be_stored_fails_that_camera_only(tmp_path):
    sims = [sim_camera(34, 1), sim_camera(34, 2)]
    async with running_sim(sims) as sim:
        cameras = [patrol_camera(sim, cfg) for cfg in sims]
        # A file where the camera's snapshot directory should be: every write for it fails.
        blocked = tmp_path / "data" / "snapshots" / sims[0].id
        blocked.parent.mkdir(parents=True)
        blocked.write_bytes(b"not a directory")
        async with patrolling(tmp_path, cameras) as service:
            (patrol,) = service.patrols.values()
            first = await patrol.run_cycle()
            second = await patrol.run_cycle()

            assert (first.succeeded, first.failed) == (1, 1)
            assert second.number == 2
            assert service.health(sims[0].id).last_error_class == "internal"
            assert "cannot store the snapshot" in (service.health(sims[0].id).last_error or "")
            assert service.store.latest_snapshot(sims[1].id) is not None
            assert service.supervisor.children() == []


async def test_an_unexpected_error_in_one_visit_does_not_end_the_cycle():
    """A bug met while visiting one camera is logged and counted; the others are visited."""
    cams = [Camera(id=f"c{i}", host=f"127.0.35.{i}", brand="tapo") for i in (1, 2, 3)]
    visited: list[str] = []

    async def visit(camera: Camera, purpose: str) -> CaptureOutcome:
        visited.append(camera.id)
        if camera.id == "c2":
            raise RuntimeError("boom")
        return CaptureOutcome(camera.id)

    async def no_leftovers(purpose: str) -> int:
        return 0

    async def sink(stats: CycleStats) -> None:
        return None

    patrol = Patrol(
        subnet="127.0.35.0/24",
        cameras=cams,
        settings=Settings(data_dir=Path("unused")),
        visit=visit,
        is_due=lambda camera: True,
        end_leftovers=no_leftovers,
        record_cycle=sink,
    )
    stats = await patrol.run_cycle()
    assert visited == ["c1", "c2", "c3"]
    assert (stats.visited, stats.succeeded, stats.failed) == (3, 2, 1)
