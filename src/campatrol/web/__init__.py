"""HTTP API and dashboard over a running Service."""

from __future__ import annotations

from campatrol.web.app import create_app

__all__ = ["create_app"]
