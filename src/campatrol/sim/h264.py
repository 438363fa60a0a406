"""Split an H.264 Annex B elementary stream into NAL units and access units."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Final

NAL_SLICE: Final = 1
NAL_IDR: Final = 5
NAL_SEI: Final = 6
NAL_SPS: Final = 7
NAL_PPS: Final = 8
NAL_AUD: Final = 9

_VCL_TYPES: Final = frozenset({NAL_SLICE, NAL_IDR})
# Non-VCL NAL types that may only appear before the first slice of an access unit
# (ITU-T H.264 section 7.4.1.2.3).
_AU_OPENERS: Final = frozenset({NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD, 14, 15, 16, 17, 18})


@dataclass(frozen=True)
class AccessUnit:
    """The NAL units of one coded picture, without start codes."""

    nals: tuple[bytes, ...]

    @property
    def is_keyframe(self) -> bool:
        """Whether the picture is an IDR picture a decoder can start on."""
        return any(nal[0] & 0x1F == NAL_IDR for nal in self.nals)


def split_nal_units(stream: bytes) -> list[bytes]:
    """Return the NAL units of an Annex B byte stream, start codes and trailing zeros removed."""
    starts: list[tuple[int, int]] = []  # (start code offset, payload offset)
    pos = stream.find(b"\x00\x00\x01")
    while pos != -1:
        code_at = pos - 1 if pos > 0 and stream[pos - 1] == 0 else pos
        starts.append((code_at, pos + 3))
        pos = stream.find(b"\x00\x00\x01", pos + 3)
    nals: list[bytes] = []
    for index, (_, begin) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(stream)
        nal = stream[begin:end].rstrip(b"\x00")
        if nal:
            nals.append(nal)
    return nals


def _first_mb_is_zero(nal: bytes) -> bool:
    # first_mb_in_slice is the slice header's first ue(v); it is 0 exactly when its first bit
    # is 1.
    return len(nal) > 1 and bool(nal[1] & 0x80)


def group_access_units(nals: list[bytes]) -> list[AccessUnit]:
    """Group NAL units into access units (one coded picture each)."""
    units: list[AccessUnit] = []
    current: list[bytes] = []
    has_slice = False
    for nal in nals:
        nal_type = nal[0] & 0x1F
        opens_new = (nal_type in _AU_OPENERS and has_slice) or (
            nal_type in _VCL_TYPES and has_slice and _first_mb_is_zero(nal)
        )
        if opens_new:
            units.append(AccessUnit(tuple(current)))
            current, has_slice = [], False
        current.append(nal)
        has_slice = has_slice or nal_type in _VCL_TYPES
    if current and has_slice:
        units.append(AccessUnit(tuple(current)))
    return units


def parameter_sets(nals: list[bytes]) -> tuple[bytes, bytes]:
    """Return the first SPS and PPS of a stream; ValueError if either is missing."""
    sps = next((nal for nal in nals if nal[0] & 0x1F == NAL_SPS), None)
    pps = next((nal for nal in nals if nal[0] & 0x1F == NAL_PPS), None)
    if sps is None or pps is None:
        raise ValueError("H.264 stream has no SPS or no PPS")
    return sps, pps


def sprop_parameter_sets(sps: bytes, pps: bytes) -> str:
    """Return the SDP sprop-parameter-sets value (RFC 6184 section 8.1)."""
    return ",".join(base64.b64encode(nal).decode("ascii") for nal in (sps, pps))


def profile_level_id(sps: bytes) -> str:
    """Return the SDP profile-level-id: profile_idc, constraint flags and level_idc in hex."""
    return sps[1:4].hex().upper()
