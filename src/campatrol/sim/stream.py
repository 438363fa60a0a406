"""Send a camera's clip to one session as RTP at real-time pace, with stream faults."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Final

from campatrol.sim.clips import Clip
from campatrol.sim.rtp import CLOCK_RATE, interleave, rtp_packet

if TYPE_CHECKING:
    from campatrol.sim.camera import Session, SimCamera

logger = logging.getLogger(__name__)

# A client that reads slower than real time loses pictures up to the next keyframe instead of
# growing the simulator's memory, as a camera with a small send buffer would.
MAX_BUFFERED: Final = 4 * 1024 * 1024


async def stream_session(camera: SimCamera, session: Session, transport: asyncio.Transport) -> None:
    """Stream until cancelled; stream faults are read from the camera before every picture.

    Cancellation stops the stream between two pictures (never inside one).
    """
    clip = await camera.clip(session.stream)
    index = clip.spec.gop // 2 if camera.fault == "non_keyframe_start" else 0
    session.streaming = True
    try:
        await _send_forever(camera, session, transport, clip, index)
    finally:
        session.streaming = False


async def _send_forever(
    camera: SimCamera, session: Session, transport: asyncio.Transport, clip: Clip, index: int
) -> None:
    loop = asyncio.get_running_loop()
    fps = clip.spec.fps
    started = loop.time()
    # Pictures sent since PLAY: gives the RTP timestamp and the pacing clock.
    frame = 0
    seq = session.first_seq
    waiting_for_keyframe = False
    while True:
        await asyncio.sleep(max(0.0, started + frame / fps - loop.time()))
        elapsed = loop.time() - started
        fault, params = camera.fault, camera.fault_params

        # Scene changes take effect at a keyframe so the decoder never mixes two clips.
        if index == 0:
            latest = camera.ready_clip(session.stream)
            if latest is not None:
                clip = latest
        unit_index = index
        if fault == "slow_keyframe" and elapsed < params["delay"]:
            # Pictures that reference a keyframe the client never got keep the connection busy,
            # so a socket timeout does not fire; only an outer deadline ends the wait.
            unit_index = 1 + frame % max(1, clip.spec.gop - 1)
            if unit_index >= len(clip.units) or clip.units[unit_index].keyframe:
                unit_index = 1
        unit = clip.units[unit_index % len(clip.units)]

        stalled = fault == "stall" and elapsed >= params["after"]
        if unit.keyframe:
            waiting_for_keyframe = False
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            waiting_for_keyframe = True
        if not stalled and not waiting_for_keyframe and not transport.is_closing():
            timestamp = session.first_rtptime + frame * CLOCK_RATE // fps
            last = len(unit.payloads) - 1
            packets = []
            for number, payload in enumerate(unit.payloads):
                packet = rtp_packet(
                    payload, seq=seq, timestamp=timestamp, ssrc=session.ssrc, marker=number == last
                )
                packets.append(interleave(session.channel, packet))
                seq += 1
            transport.write(b"".join(packets))

        frame += 1
        if unit_index == index:
            index = (index + 1) % len(clip.units)
