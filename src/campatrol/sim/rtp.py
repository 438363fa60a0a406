"""RTP packetization of H.264 access units (RFC 6184) and RTSP interleaved framing."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from campatrol.sim.h264 import AccessUnit

PAYLOAD_TYPE: Final = 96
CLOCK_RATE: Final = 90_000
# Keeps each RTP packet, with its 12-byte header, inside a 1500-byte Ethernet MTU even with
# IP and UDP headers, so the same packets serve TCP and UDP.
MAX_PAYLOAD: Final = 1400
_FU_A: Final = 28

_HEADER = struct.Struct("!BBHII")
_INTERLEAVED = struct.Struct("!cBH")


@dataclass(frozen=True)
class PacketizedUnit:
    """The RTP payloads of one access unit, ready to be stamped with a header per client."""

    payloads: tuple[bytes, ...]
    keyframe: bool
    size: int


def packetize(unit: AccessUnit, max_payload: int = MAX_PAYLOAD) -> PacketizedUnit:
    """Split an access unit into RTP payloads: single NAL unit packets, or FU-A fragments."""
    payloads: list[bytes] = []
    for nal in unit.nals:
        if len(nal) <= max_payload:
            payloads.append(nal)
            continue
        header = nal[0]
        indicator = bytes([(header & 0xE0) | _FU_A])
        nal_type = header & 0x1F
        body = memoryview(nal)[1:]
        chunk = max_payload - 2
        for offset in range(0, len(body), chunk):
            start_bit = 0x80 if offset == 0 else 0
            end_bit = 0x40 if offset + chunk >= len(body) else 0
            fu_header = bytes([start_bit | end_bit | nal_type])
            payloads.append(indicator + fu_header + bytes(body[offset : offset + chunk]))
    return PacketizedUnit(tuple(payloads), unit.is_keyframe, sum(len(p) for p in payloads))


def rtp_packet(payload: bytes, *, seq: int, timestamp: int, ssrc: int, marker: bool) -> bytes:
    """Return one RTP packet (version 2, no padding, extension or CSRC)."""
    second = (0x80 if marker else 0) | PAYLOAD_TYPE
    return _HEADER.pack(0x80, second, seq & 0xFFFF, timestamp & 0xFFFFFFFF, ssrc) + payload


def interleave(channel: int, packet: bytes) -> bytes:
    """Frame a packet for RTP over the RTSP connection (RFC 2326 section 10.12)."""
    return _INTERLEAVED.pack(b"$", channel, len(packet)) + packet
