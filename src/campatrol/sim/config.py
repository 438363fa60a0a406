"""Simulated camera settings: the dataclass, the TOML file and generated camera sets."""

from __future__ import annotations

import dataclasses
import ipaddress
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from campatrol.errors import ConfigError

AUTH_MODES: Final = ("none", "basic", "digest")
OVER_LIMIT_MODES: Final = ("453", "reset", "silence")
FAULTS: Final[Mapping[str, tuple[str, ...]]] = {
    "none": (),
    "hang_after_accept": (),
    "hang_options": (),
    "hang_describe": (),
    "hang_setup": (),
    "hang_play": (),
    "stall": ("after",),
    "reset": (),
    "refuse": (),
    "reject_auth": (),
    "lockout": ("after_failures", "seconds"),
    "garbage": (),
    "non_keyframe_start": (),
    "slow_keyframe": ("delay",),
}
FAULT_DEFAULTS: Final[Mapping[str, Mapping[str, float]]] = {
    "stall": {"after": 2.0},
    "lockout": {"after_failures": 3, "seconds": 30.0},
    "slow_keyframe": {"delay": 10.0},
}
DEFAULT_CONTROL_HOST: Final = "127.0.0.1"
DEFAULT_CONTROL_PORT: Final = 8553


def check_fault(fault: str | None, params: Mapping[str, Any]) -> tuple[str, dict[str, float]]:
    """Return a fault name and its full parameters; ValueError names a bad name or parameter."""
    name = fault or "none"
    if name not in FAULTS:
        raise ValueError(f"unknown fault {name!r}; known: {', '.join(FAULTS)}")
    unknown = set(params) - set(FAULTS[name])
    if unknown:
        raise ValueError(f"fault {name!r} takes no parameter {', '.join(sorted(unknown))}")
    merged = dict(FAULT_DEFAULTS.get(name, {}))
    for key, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"fault {name!r}: {key} must be a number >= 0, not {value!r}")
        merged[key] = float(value)
    return name, merged


@dataclass(frozen=True)
class SimCameraConfig:
    """One simulated camera: where it listens, what it streams and how it misbehaves."""

    id: str
    name: str = ""
    host: str = "127.0.0.1"
    port: int = 8554
    paths: Mapping[str, str] = field(
        default_factory=lambda: {"main": "/stream1", "sub": "/stream2"}
    )
    width: int = 640
    height: int = 360
    fps: int = 15
    gop: int = 15
    auth: str = "none"
    username: str = ""
    password: str = ""
    max_sessions: int = 2
    over_limit: str = "453"
    hold_after_drop: float = 0.0
    session_timeout: float = 60.0
    scene: int = 0
    label: str | None = None
    fault: str | None = None
    fault_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check()

    def _check(self) -> None:
        where = f"sim camera {self.id!r}"
        if not self.id:
            raise ValueError("sim camera: id must not be empty")
        try:
            address = ipaddress.ip_address(self.host)
        except ValueError:
            raise ValueError(f"{where}: host must be an IP address, not {self.host!r}") from None
        if not address.is_loopback:
            raise ValueError(f"{where}: host {self.host} is not a loopback address")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"{where}: port {self.port} is out of range")
        if not self.paths or any(not p.startswith("/") for p in self.paths.values()):
            raise ValueError(f"{where}: paths must be a non-empty table of paths starting with /")
        if self.width < 16 or self.height < 16 or self.width % 4 or self.height % 4:
            raise ValueError(f"{where}: width and height must be multiples of 4, at least 16")
        if not 1 <= self.fps <= 60 or self.gop < 1:
            raise ValueError(f"{where}: fps must be 1..60 and gop at least 1")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"{where}: auth must be one of {', '.join(AUTH_MODES)}")
        if self.auth != "none" and not self.username:
            raise ValueError(f"{where}: auth {self.auth} needs a username")
        if self.max_sessions < 1:
            raise ValueError(f"{where}: max_sessions must be at least 1")
        if self.over_limit not in OVER_LIMIT_MODES:
            raise ValueError(f"{where}: over_limit must be one of {', '.join(OVER_LIMIT_MODES)}")
        if self.hold_after_drop < 0 or self.session_timeout <= 0:
            raise ValueError(f"{where}: hold_after_drop >= 0 and session_timeout > 0 required")
        try:
            check_fault(self.fault, self.fault_params)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None

    @property
    def display_name(self) -> str:
        """The camera's name, or its id when it has none."""
        return self.name or self.id

    def stream_size(self, stream: str) -> tuple[int, int]:
        """Return (width, height) of a stream: the main stream full size, others half."""
        if stream == "main" or stream == next(iter(self.paths)):
            return self.width, self.height
        return (self.width // 4) * 2, (self.height // 4) * 2

    def url(self, stream: str = "main", *, port: int | None = None, masked: bool = False) -> str:
        """Return the stream's rtsp:// URL with percent-encoded (or masked) credentials."""
        if stream not in self.paths:
            raise ValueError(f"sim camera {self.id!r} has no stream {stream!r}")
        host = f"[{self.host}]" if ":" in self.host else self.host
        userinfo = ""
        if self.auth != "none":
            if masked:
                userinfo = "***:***@"
            else:
                userinfo = f"{quote(self.username, safe='')}:{quote(self.password, safe='')}@"
        return f"rtsp://{userinfo}{host}:{self.port if port is None else port}{self.paths[stream]}"


_FIELDS: Final = {f.name for f in dataclasses.fields(SimCameraConfig)}


@dataclass(frozen=True)
class SimConfig:
    """A simulator's whole configuration: control endpoint and cameras."""

    cameras: list[SimCameraConfig]
    control_host: str = DEFAULT_CONTROL_HOST
    control_port: int = DEFAULT_CONTROL_PORT


def camera_from_mapping(entry: Mapping[str, Any], where: str) -> SimCameraConfig:
    """Build a camera from a TOML table; ConfigError names the entry and the bad key."""
    unknown = set(entry) - _FIELDS
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    values = dict(entry)
    if "id" not in values:
        raise ConfigError(f"{where}: missing key id")
    values["id"] = str(values["id"])
    try:
        return SimCameraConfig(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def load_sim_config(path: str | Path) -> SimConfig:
    """Read a simulator TOML file; ConfigError names the file, the entry and the reason."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    control = data.get("control", {})
    defaults = data.get("defaults", {})
    entries = data.get("cameras", [])
    if not isinstance(control, dict) or not isinstance(defaults, dict):
        raise ConfigError(f"{path}: [control] and [defaults] must be tables")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: needs at least one [[cameras]] entry")
    cameras = [
        camera_from_mapping({**defaults, **entry}, f"{path}: cameras[{index}]")
        for index, entry in enumerate(entries)
    ]
    _check_unique(cameras, str(path))
    return SimConfig(
        cameras,
        control_host=str(control.get("host", DEFAULT_CONTROL_HOST)),
        control_port=int(control.get("port", DEFAULT_CONTROL_PORT)),
    )


def _check_unique(cameras: list[SimCameraConfig], where: str) -> None:
    seen_ids: set[str] = set()
    seen_addresses: set[tuple[str, int]] = set()
    for camera in cameras:
        if camera.id in seen_ids:
            raise ConfigError(f"{where}: duplicate camera id {camera.id!r}")
        seen_ids.add(camera.id)
        if camera.port and (camera.host, camera.port) in seen_addresses:
            raise ConfigError(
                f"{where}: camera {camera.id!r}: {camera.host}:{camera.port} is taken"
            )
        seen_addresses.add((camera.host, camera.port))


def generate_cameras(count: int, subnets: int, **overrides: Any) -> list[SimCameraConfig]:
    """Return `count` Tapo-like cameras spread over 127.0.S.H (S = 1..subnets), port 8554."""
    if count < 1 or not 1 <= subnets <= 254:
        raise ValueError("cameras must be >= 1 and subnets 1..254")
    per_subnet = -(-count // subnets)
    if per_subnet > 254:
        raise ValueError(f"{count} cameras over {subnets} subnets exceeds 254 per subnet")
    cameras = []
    for index in range(count):
        subnet, host = index // per_subnet + 1, index % per_subnet + 1
        cameras.append(
            SimCameraConfig(
                id=f"s{subnet}c{host}",
                name=f"Sim {subnet}-{host}",
                host=f"127.0.{subnet}.{host}",
                port=8554,
                **overrides,
            )
        )
    return cameras
