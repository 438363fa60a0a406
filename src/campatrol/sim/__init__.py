"""The camera simulator: real RTSP servers on loopback with an oracle and injectable faults."""

from __future__ import annotations

from campatrol.sim.camera import SimCamera
from campatrol.sim.clips import SCENE_PALETTE, scene_color, scene_probe_point
from campatrol.sim.config import (
    FAULTS,
    SimCameraConfig,
    SimConfig,
    generate_cameras,
    load_sim_config,
)
from campatrol.sim.simulator import Simulator

__all__ = [
    "FAULTS",
    "SCENE_PALETTE",
    "SimCamera",
    "SimCameraConfig",
    "SimConfig",
    "Simulator",
    "generate_cameras",
    "load_sim_config",
    "scene_color",
    "scene_probe_point",
]
