"""Server settings and the camera list from one TOML file, with a clear problem per bad entry."""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import logging
import os
import re
import tomllib
import zoneinfo
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from campatrol.cameras import BRAND_PRESETS, CAMERA_ID_PATTERN, Camera, mask_secrets
from campatrol.errors import ConfigError

logger = logging.getLogger(__name__)

DEFAULT_CONFIG_PATH: Final = Path("campatrol.toml")
TOP_LEVEL_KEYS: Final = ("server", "alerts", "cameras")

_DNS_LABEL: Final = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_ENV_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def host_timezone() -> str:
    """Return the IANA name of the host's local time zone, or "UTC" when it cannot be told."""
    candidates: list[str] = []
    if tz := os.environ.get("TZ", "").lstrip(":"):
        candidates.append(tz)
    # Debian and most distributions link /etc/localtime into the zoneinfo tree.
    localtime = Path("/etc/localtime")
    if localtime.is_symlink():
        target = str(localtime.resolve())
        if "/zoneinfo/" in target:
            candidates.append(target.split("/zoneinfo/", 1)[1])
    with contextlib.suppress(OSError):
        candidates.append(Path("/etc/timezone").read_text(encoding="utf-8").strip())
    for name in candidates:
        if _is_zone(name):
            return name
    return "UTC"


def _is_zone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def check_host(value: str) -> str:
    """Return a camera host normalised (IPv6 unbracketed), or raise ValueError saying why."""
    host = value.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    name = host.rstrip(".")
    labels = name.split(".")
    # An all-numeric name is a mistyped IPv4 address (e.g. 127.0.1.300), not a DNS name.
    numeric = name.replace(".", "").isdigit()
    if name and len(name) <= 253 and not numeric and all(map(_DNS_LABEL.match, labels)):
        return name.lower()
    raise ValueError("must be an IPv4 address, an IPv6 address or a DNS name")


class AlertSettings(BaseModel):
    """The `[alerts]` table: thresholds of the alerts and where to POST them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_children_total: int | None = Field(
        None,
        ge=0,
        description="Alert when more child processes than this run at once "
        "(default: [server] max_processes).",
    )
    max_children_per_camera: int | None = Field(
        None,
        ge=0,
        description="Alert when more child processes than this run for one camera "
        "(default: the camera's max_sessions).",
    )
    event_hold: float = Field(
        600.0,
        gt=0,
        description="Seconds an event alert (leak, watchdog kill, orphan) stays active after "
        "its last occurrence before it clears.",
    )
    webhook_url: str | None = Field(
        None,
        description="http(s) URL that receives each alert start and clear as a JSON POST "
        "(no default: nothing is sent unless set).",
    )
    webhook_timeout: float = Field(
        5.0, gt=0, le=60, description="Seconds one webhook POST may take before it is given up."
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value


class Settings(BaseModel):
    """The `[server]` table: how campatrol listens, stores, patrols and backs off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: str = Field(
        "127.0.0.1", description="Address the HTTP server binds (an IPv4 or IPv6 address)."
    )
    port: int = Field(8080, ge=1, le=65535, description="TCP port of the HTTP server.")
    data_dir: Path = Field(
        Path("./data"), description="Directory for the database and snapshot files."
    )
    timezone: str = Field(
        default_factory=host_timezone,
        description="IANA time zone used to show times to people (default: the host's).",
    )
    deadline: float = Field(
        10.0, gt=0, le=600, description="Default capture deadline in seconds, per camera."
    )
    interval: float = Field(
        60.0, gt=0, description="Seconds from the start of one cycle to the start of the next."
    )
    cooldown: float = Field(
        5.0, ge=0, description="Minimum idle gap in seconds between two cycles of a subnet."
    )
    max_processes: int = Field(
        8, ge=1, le=1024, description="Most capture processes running at once, all subnets."
    )
    subnet_concurrency: int = Field(
        1, ge=1, le=64, description="Cameras of one subnet captured at the same time."
    )
    slot_wait: float = Field(
        5.0, ge=0, description="Seconds a capture waits for a free camera slot before 'busy'."
    )
    retention_days: int = Field(
        7, ge=1, le=3650, description="Days of capture and cycle history kept in the database."
    )
    failing_after: int = Field(
        1, ge=1, description="Consecutive failures after which a camera is 'failing'."
    )
    offline_after: int = Field(
        3, ge=1, description="Consecutive failures after which a camera is 'offline'."
    )
    backoff_base: float | None = Field(
        None,
        gt=0,
        description="Backoff in seconds after the second failure in a row (default: interval).",
    )
    backoff_max: float = Field(
        900.0, gt=0, description="Longest backoff in seconds for a failing camera."
    )
    unauthorized_backoff: float = Field(
        2400.0,
        gt=0,
        description="Backoff in seconds after a rejected login; longer than the ~30-minute "
        "lockout of Tapo and Hikvision cameras so retries do not renew it.",
    )
    grace: float = Field(
        2.0, gt=0, le=60, description="Seconds between SIGTERM and SIGKILL of a capture process."
    )
    alerts: AlertSettings = Field(
        default_factory=AlertSettings,
        description="The `[alerts]` table (a table of its own in the file, not a [server] key).",
    )

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value.strip("[]")))
        except ValueError:
            raise ValueError("must be an IPv4 or IPv6 address") from None

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        if not _is_zone(value):
            raise ValueError("must be an IANA time zone name such as 'Europe/Paris' or 'UTC'")
        return value

    @model_validator(mode="after")
    def _check_relations(self) -> Settings:
        if self.offline_after < self.failing_after:
            raise ValueError("offline_after must be at least failing_after")
        if self.backoff_max < self.effective_backoff_base:
            raise ValueError("backoff_max must be at least backoff_base (default: interval)")
        return self

    @property
    def effective_backoff_base(self) -> float:
        """The first backoff in seconds: `backoff_base`, or `interval` when it is not set."""
        return self.backoff_base if self.backoff_base is not None else self.interval


class CameraEntry(BaseModel):
    """One `[[cameras]]` table as written, before defaults from the brand and server apply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(description="Unique slug: lowercase letters, digits, '-' and '_'.")
    name: str | None = Field(None, description="Display name (default: the id).")
    host: str = Field(description="IPv4 address, IPv6 address or DNS name.")
    port: int = Field(554, description="RTSP port.")
    brand: Literal["tapo", "hikvision", "dahua", "reolink", "generic"] = Field(
        "generic", description="Preset for stream paths and max_sessions."
    )
    path: str | None = Field(None, description="Stream path; wins over `stream`.")
    stream: Literal["main", "sub"] | None = Field(None, description="Brand preset stream.")
    username: str = Field("", description="RTSP user name.")
    password: str | None = Field(None, description="RTSP password.")
    password_env: str | None = Field(None, description="Environment variable with the password.")
    max_sessions: int | None = Field(None, ge=1, le=64, description="Concurrent RTSP sessions.")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTP transport.")
    deadline: float | None = Field(None, gt=0, le=600, description="Capture deadline (s).")
    subnet: str | None = Field(None, description="Patrol group override.")
    enabled: bool = Field(True, description="Whether the camera is patrolled.")
    hold_after_kill: float | None = Field(
        None, ge=0, le=3600, description="Seconds a slot stays taken after a SIGKILL."
    )

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not CAMERA_ID_PATTERN.match(value):
            raise ValueError(
                "must be 1-63 characters of lowercase letters, digits, '-' or '_', "
                "starting with a letter or digit"
            )
        return value

    @field_validator("host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        return check_host(value)

    @field_validator("port")
    @classmethod
    def _check_port(cls, value: int) -> int:
        if not 1 <= value <= 65535:
            raise ValueError("must be between 1 and 65535")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("password_env")
    @classmethod
    def _check_password_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.match(value):
            raise ValueError("must be an environment variable name (letters, digits, '_')")
        return value

    @field_validator("subnet")
    @classmethod
    def _check_subnet(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if "/" in value:
            try:
                return str(ipaddress.ip_network(value, strict=False))
            except ValueError:
                raise ValueError("must be a network such as 192.0.2.0/24, or a host") from None
        return check_host(value)

    def stream_path(self) -> str:
        """Return `path` if set, else the brand preset's path for `stream` (default main)."""
        if self.path is not None:
            return self.path
        preset = BRAND_PRESETS[self.brand]
        chosen = preset.sub if self.stream == "sub" else preset.main
        if chosen is None:
            raise ValueError(f"path is required for brand {self.brand!r}")
        return chosen


@dataclass(frozen=True)
class ConfigProblem:
    """One reason a `[[cameras]]` entry was skipped; its text never contains a credential."""

    index: int
    camera_id: str | None
    key: str | None
    reason: str

    def __str__(self) -> str:
        where = f"cameras[{self.index}]"
        if self.camera_id is not None:
            where += f' (id "{self.camera_id}")'
        if self.key is not None:
            return f"{where}: {self.key}: {self.reason}"
        return f"{where}: {self.reason}"


@dataclass(frozen=True)
class LoadedConfig:
    """A configuration file read: settings, the valid cameras, and the entries that were not."""

    settings: Settings
    cameras: list[Camera]
    problems: list[ConfigProblem]


def load_config(path: Path | str, *, environ: Mapping[str, str] | None = None) -> LoadedConfig:
    """Read a TOML configuration file into settings, cameras and per-entry problems.

    Raises ConfigError when the file cannot be read, is not TOML, or has a bad `[server]`
    setting or top-level key: those have no camera to blame. A bad camera entry never
    raises; it becomes a ConfigProblem and the entry is skipped.
    """
    path = Path(path)
    document = _read_toml(path)
    environ = os.environ if environ is None else environ

    unknown = sorted(set(document) - set(TOP_LEVEL_KEYS))
    if unknown:
        hint = _did_you_mean(unknown[0], TOP_LEVEL_KEYS)
        raise ConfigError(f"{path}: unknown top-level key {unknown[0]!r}{hint}")
    settings = _parse_settings(path, document.get("server", {}), document.get("alerts", {}))
    entries = document.get("cameras", [])
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: 'cameras' must be an array of tables ([[cameras]])")

    cameras: list[Camera] = []
    problems: list[ConfigProblem] = []
    first_index: dict[str, int] = {}
    for index, raw in enumerate(entries, start=1):
        camera, found = _parse_camera(index, raw, settings, environ)
        if camera is not None and camera.id in first_index:
            reason = f"duplicate id; already used by cameras[{first_index[camera.id]}]"
            camera, found = None, [ConfigProblem(index, camera.id, "id", reason)]
        if camera is None:
            problems.extend(found)
            continue
        first_index[camera.id] = index
        cameras.append(camera)
    return LoadedConfig(settings=settings, cameras=cameras, problems=problems)


def group_by_subnet(cameras: Iterable[Camera]) -> dict[str, list[Camera]]:
    """Group cameras by subnet: IPv4 networks in address order, then others by name.

    Cameras keep their configuration order inside a subnet. Disabled cameras are included;
    filter them first if they should not be patrolled.
    """
    groups: dict[str, list[Camera]] = {}
    for camera in cameras:
        groups.setdefault(camera.subnet, []).append(camera)
    return {subnet: groups[subnet] for subnet in sorted(groups, key=_subnet_order)}


def _subnet_order(subnet: str) -> tuple[int, int, str]:
    try:
        network = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        return (2, 0, subnet)
    return (network.version // 6, int(network.network_address), subnet)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file: not UTF-8 text ({exc.reason})") from exc
    except tomllib.TOMLDecodeError as exc:
        # The decoder's message carries "(at line L, column C)".
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _parse_settings(path: Path, table: object, alerts: object) -> Settings:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [server] must be a table")
    if not isinstance(alerts, dict):
        raise ConfigError(f"{path}: [alerts] must be a table")
    if "alerts" in table:
        # Settings carries the [alerts] table as a field; in the file it is a table of its own.
        raise ConfigError(f"{path}: [server] alerts: unknown key (write an [alerts] table)")
    try:
        return Settings.model_validate({**table, "alerts": alerts})
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"]]
        table_name, fields = "[server]", Settings.model_fields
        if loc[:1] == ["alerts"]:
            table_name, fields, loc = "[alerts]", AlertSettings.model_fields, loc[1:]
        key = ".".join(loc)
        reason = _reason(error, fields)
        where = f"{table_name} {key}" if key else table_name
        raise ConfigError(f"{path}: {where}: {reason}") from None


def _parse_camera(
    index: int, raw: object, settings: Settings, environ: Mapping[str, str]
) -> tuple[Camera | None, list[ConfigProblem]]:
    if not isinstance(raw, dict):
        return None, [ConfigProblem(index, None, None, "must be a table ([[cameras]])")]
    camera_id = raw.get("id") if isinstance(raw.get("id"), str) else None
    secrets = _raw_secrets(raw, environ)

    def problem(key: str | None, reason: str) -> ConfigProblem:
        if key is not None:
            key = mask_secrets(key, secrets)
        return ConfigProblem(index, camera_id, key, mask_secrets(reason, secrets))

    try:
        entry = CameraEntry.model_validate(raw)
    except ValidationError as exc:
        found = []
        for error in exc.errors():
            key = ".".join(str(part) for part in error["loc"]) or None
            found.append(problem(key, _reason(error, CameraEntry.model_fields)))
        return None, found

    if entry.password is not None and entry.password_env is not None:
        return None, [problem("password_env", "set either password or password_env, not both")]
    if entry.path is None and BRAND_PRESETS[entry.brand].main is None:
        reason = f"is required for brand {entry.brand!r}, which has no preset stream path"
        return None, [problem("path", reason)]
    password = entry.password or ""
    if entry.password_env is not None:
        if entry.password_env not in environ:
            reason = f"environment variable {entry.password_env} is not set"
            return None, [problem("password_env", reason)]
        password = environ[entry.password_env]
    try:
        camera = Camera(
            id=entry.id,
            name=entry.name or entry.id,
            host=entry.host,
            port=entry.port,
            path=entry.stream_path(),
            username=entry.username,
            password=password,
            brand=entry.brand,
            max_sessions=entry.max_sessions,
            transport=entry.transport,
            deadline=entry.deadline if entry.deadline is not None else settings.deadline,
            subnet=entry.subnet or "",
            enabled=entry.enabled,
            hold_after_kill=entry.hold_after_kill,
        )
    except ValueError as exc:
        return None, [problem(None, str(exc))]
    return camera, []


def _raw_secrets(raw: Mapping[str, object], environ: Mapping[str, str]) -> list[str]:
    found = []
    if isinstance(raw.get("password"), str):
        found.append(raw["password"])
    env_name = raw.get("password_env")
    if isinstance(env_name, str) and isinstance(environ.get(env_name), str):
        found.append(environ[env_name])
    return [s for s in found if isinstance(s, str)]


def _reason(error: Mapping[str, Any], fields: Iterable[str]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "unknown key" + _did_you_mean(str(error["loc"][-1]), fields)
    message = str(error["msg"])
    # Our own validators raise ValueError; pydantic prefixes those with "Value error, ".
    message = message.removeprefix("Value error, ")
    if message[:1].isupper():
        message = message[0].lower() + message[1:]
    return message


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""
