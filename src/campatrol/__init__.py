"""campatrol: patrols IP cameras for still images without leaking processes or sessions."""

from __future__ import annotations

__version__ = "0.1.0"
