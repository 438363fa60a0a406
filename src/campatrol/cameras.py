"""The camera model: RTSP URL building, credential masking and brand presets."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal
from urllib.parse import quote, quote_plus

MASK: Final = "***"

# A camera id names files and URL paths, so it is a slug: no separators, no dots, no case games.
CAMERA_ID_PATTERN: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")

Transport = Literal["tcp", "udp"]
TRANSPORTS: Final[tuple[str, ...]] = ("tcp", "udp")


@dataclass(frozen=True)
class BrandPreset:
    """Stream paths and slot facts for one camera family.

    `main` and `sub` are None when the family has no common path (the camera must set `path`).
    `hold_after_kill` is how long the camera may keep a session whose client vanished without
    RTSP TEARDOWN, as far as campatrol assumes by default.
    """

    main: str | None
    sub: str | None
    max_sessions: int
    hold_after_kill: float


# Paths and session limits from public field reports (README.md, "Brand presets").
# Reolink's limit is not documented in those reports, so it gets the same conservative values
# as an unknown camera: one session, and a 1 s gap after an unclean disconnect.
BRAND_PRESETS: Final[Mapping[str, BrandPreset]] = MappingProxyType(
    {
        "tapo": BrandPreset("/stream1", "/stream2", max_sessions=2, hold_after_kill=0.0),
        "hikvision": BrandPreset(
            "/Streaming/Channels/101",
            "/Streaming/Channels/102",
            max_sessions=4,
            hold_after_kill=0.0,
        ),
        "dahua": BrandPreset(
            "/cam/realmonitor?channel=1&subtype=0",
            "/cam/realmonitor?channel=1&subtype=1",
            max_sessions=4,
            hold_after_kill=0.0,
        ),
        "reolink": BrandPreset(
            "/h264Preview_01_main", "/h264Preview_01_sub", max_sessions=1, hold_after_kill=1.0
        ),
        "generic": BrandPreset(None, None, max_sessions=1, hold_after_kill=1.0),
    }
)

# RFC 3986 section 3.2.1: userinfo ends at the *last* "@" before the path, so the greedy class
# also hides a raw password that itself contains "@".
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#\s]+)@")


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Return `text` with every secret and every URL userinfo replaced by `***`.

    Secrets are matched in one pass, longest first, so a secret that contains another is
    masked whole. Userinfo of any `scheme://user:pass@` is masked even when its parts are not
    among `secrets` (e.g. a URL echoed back by ffmpeg in another encoding).
    """
    wanted = sorted({s for s in secrets if s}, key=len, reverse=True)
    if wanted:
        text = re.sub("|".join(re.escape(s) for s in wanted), MASK, text)
    return _USERINFO.sub(_mask_userinfo, text)


def _mask_userinfo(match: re.Match[str]) -> str:
    masked = f"{MASK}:{MASK}" if ":" in match["userinfo"] else MASK
    return f"{match['scheme']}{masked}@"


def default_subnet(host: str) -> str:
    """Return the subnet a host is patrolled in by default: its IPv4 /24, else the host itself.

    IPv6 prefixes say little about physical grouping and DNS names say nothing, so those hosts
    form a subnet of their own unless the configuration groups them.
    """
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if address.version == 4:
        return str(ipaddress.ip_network(f"{address}/24", strict=False))
    return str(address)


def _url_host(host: str) -> str:
    if ":" not in host or host.startswith("["):
        return host
    # RFC 6874: an IPv6 zone id is introduced by "%25" inside the brackets.
    return "[" + host.replace("%", "%25") + "]"


@dataclass(frozen=True)
class Camera:
    """One configured video source.

    `max_sessions` and `hold_after_kill` left as None take the brand preset's values, and an
    empty `subnet` becomes `default_subnet(host)`; after construction none of them is empty.
    The password never appears in `repr`.
    """

    id: str
    host: str
    name: str = ""
    port: int = 554
    path: str = "/"
    username: str = ""
    password: str = field(default="", repr=False)
    brand: str = "generic"
    max_sessions: int | None = None
    transport: Transport = "tcp"
    deadline: float = 10.0
    subnet: str = ""
    enabled: bool = True
    hold_after_kill: float | None = None

    def __post_init__(self) -> None:
        preset = BRAND_PRESETS.get(self.brand)
        if preset is None:
            raise ValueError(f"camera {self.id}: unknown brand {self.brand!r}")
        # Frozen dataclass: filling derived defaults once, here, keeps every reader simple.
        if self.max_sessions is None:
            object.__setattr__(self, "max_sessions", preset.max_sessions)
        if self.hold_after_kill is None:
            object.__setattr__(self, "hold_after_kill", preset.hold_after_kill)
        if not self.subnet:
            object.__setattr__(self, "subnet", default_subnet(self.host))
        if not self.name:
            object.__setattr__(self, "name", self.id)
        self._check()

    def _check(self) -> None:
        if not self.host:
            raise ValueError(f"camera {self.id}: host is empty")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"camera {self.id}: port must be between 1 and 65535")
        if not self.path.startswith("/"):
            raise ValueError(f"camera {self.id}: path must start with '/'")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"camera {self.id}: transport must be 'tcp' or 'udp'")
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError(f"camera {self.id}: max_sessions must be at least 1")
        if self.deadline <= 0:
            raise ValueError(f"camera {self.id}: deadline must be positive")
        if self.hold_after_kill is not None and self.hold_after_kill < 0:
            raise ValueError(f"camera {self.id}: hold_after_kill must not be negative")

    def rtsp_url(self) -> str:
        """Return the full RTSP URL with percent-encoded credentials; only for a child's argv."""
        userinfo = self._userinfo(quote(self.username, safe=""), self._quoted_password())
        return f"rtsp://{userinfo}{_url_host(self.host)}:{self.port}{self.path}"

    def masked_url(self) -> str:
        """Return the RTSP URL with user name and password replaced by `***`, safe to show."""
        userinfo = self._userinfo(MASK, MASK) if self.username or self.password else ""
        path = mask_secrets(self.path, self.secrets())
        return f"rtsp://{userinfo}{_url_host(self.host)}:{self.port}{path}"

    def secrets(self) -> tuple[str, ...]:
        """Return the strings that must never be printed: the password, raw and encoded.

        User names are not secrets: masking a name like "admin" everywhere would garble
        messages, so they are hidden only inside URLs (by `masked_url` and `mask_secrets`).
        """
        if not self.password:
            return ()
        forms = {self.password, self._quoted_password(), quote_plus(self.password, safe="")}
        return tuple(sorted(forms, key=len, reverse=True))

    def _quoted_password(self) -> str:
        return quote(self.password, safe="")

    @staticmethod
    def _userinfo(user: str, password: str) -> str:
        if not user and not password:
            return ""
        return f"{user}:{password}@" if password else f"{user}@"
