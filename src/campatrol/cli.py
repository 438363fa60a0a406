"""campatrol's command line: run, demo, snap, check-config, sim, ps."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="campatrol",
    help="Patrol IP cameras for still images without leaking processes or camera sessions.",
    no_args_is_help=True,
    add_completion=False,
)


def _register_sim() -> None:
    from campatrol.sim.cli import sim_command

    app.command("sim", help="Run simulated RTSP cameras with injectable faults.")(sim_command)


_register_sim()


def main() -> None:
    """Console entry point."""
    app()
