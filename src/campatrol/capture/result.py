"""What a successful capture produces, and the check that its bytes are a real JPEG."""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from PIL import Image

from campatrol.errors import InvalidImage

MIN_SIDE: Final = 16
MAX_SIDE: Final = 16384  # beyond any camera's sensor; also keeps decompression bombs out

_SOI: Final = b"\xff\xd8"
_EOI: Final = b"\xff\xd9"


@dataclass(frozen=True)
class Snapshot:
    """A validated JPEG from one camera, with when and how it was taken."""

    jpeg: bytes
    width: int
    height: int
    taken_at: datetime  # UTC, when the frame arrived
    duration: float  # seconds the capture took
    driver: str = "ffmpeg"

    def __repr__(self) -> str:
        return (
            f"Snapshot({self.width}x{self.height}, {len(self.jpeg)} bytes, "
            f"taken_at={self.taken_at}, driver={self.driver})"
        )


def validate_jpeg(data: bytes) -> tuple[int, int]:
    """Return (width, height) of a complete, decodable JPEG; raise InvalidImage otherwise.

    Decoding is blocking work: call it through asyncio.to_thread from the event loop.
    """
    if not data:
        raise InvalidImage("no image data")
    if not data.startswith(_SOI):
        raise InvalidImage(f"not a JPEG: no start-of-image marker ({len(data)} bytes)")
    if not data.endswith(_EOI):
        raise InvalidImage(f"truncated JPEG: no end-of-image marker ({len(data)} bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            width, height = image.size
            # Check the header's size before decoding, so a hostile size is never allocated.
            if not (MIN_SIDE <= width <= MAX_SIDE and MIN_SIDE <= height <= MAX_SIDE):
                raise InvalidImage(f"implausible JPEG size {width}x{height}")
            image.load()
    except InvalidImage:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"JPEG does not decode: {exc}") from exc
    return width, height
