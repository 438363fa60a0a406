"""Logging set-up: one line per event, UTC ISO 8601 times, credentials masked on the way out."""

from __future__ import annotations

import logging
import time

from campatrol.cameras import mask_secrets


class MaskingFilter(logging.Filter):
    """Masks `scheme://user:pass@` in every record, a last guard behind masking at the source."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = mask_secrets(message, ())
        if masked != message:
            record.msg, record.args = masked, None
        return True


class UtcFormatter(logging.Formatter):
    """Formats times as UTC ISO 8601 with an explicit offset, e.g. 2026-12-04T15:02:11+00:00."""

    converter = time.gmtime

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", self.converter(record.created))


def configure_logging(level: int = logging.INFO) -> None:
    """Send campatrol's log lines to stderr, masked, with UTC timestamps."""
    handler = logging.StreamHandler()
    handler.setFormatter(UtcFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(MaskingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("campatrol").setLevel(level)
    logging.getLogger("uvicorn.error").setLevel(level)
