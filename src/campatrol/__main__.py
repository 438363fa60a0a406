"""Run campatrol's command line with `python -m campatrol`."""

from __future__ import annotations

from campatrol.cli import main

if __name__ == "__main__":
    main()
