"""`campatrol sim`: run simulated cameras from a TOML file or a generated set."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

import typer

from campatrol.errors import ConfigError
from campatrol.sim.config import (
    DEFAULT_CONTROL_HOST,
    DEFAULT_CONTROL_PORT,
    SimConfig,
    generate_cameras,
    load_sim_config,
)
from campatrol.sim.simulator import Simulator

logger = logging.getLogger(__name__)


def sim_command(
    config: Path | None = typer.Option(None, "--config", help="TOML file of simulated cameras."),
    cameras: int = typer.Option(0, "--cameras", help="Generate this many Tapo-like cameras."),
    subnets: int = typer.Option(1, "--subnets", help="Spread generated cameras over K /24s."),
    control_host: str | None = typer.Option(None, "--control-host", help="Control API address."),
    control_port: int | None = typer.Option(None, "--control-port", help="Control API port."),
    quiet: bool = typer.Option(False, "--quiet", help="Do not print one line per camera."),
) -> None:
    """Run simulated RTSP cameras until SIGINT or SIGTERM."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        sim_config = _build_config(config, cameras, subnets)
    except (ConfigError, ValueError) as exc:
        typer.echo(f"campatrol sim: {exc}", err=True)
        raise typer.Exit(2) from exc
    host = control_host or sim_config.control_host
    port = sim_config.control_port if control_port is None else control_port
    try:
        asyncio.run(_run(sim_config, host, port, quiet))
    except OSError as exc:
        typer.echo(f"campatrol sim: {exc}", err=True)
        raise typer.Exit(1) from exc


def _build_config(config: Path | None, cameras: int, subnets: int) -> SimConfig:
    if (config is None) == (cameras == 0):
        raise ValueError("give either --config FILE or --cameras N")
    if config is not None:
        return load_sim_config(config)
    return SimConfig(generate_cameras(cameras, subnets), DEFAULT_CONTROL_HOST, DEFAULT_CONTROL_PORT)


async def _run(config: SimConfig, control_host: str, control_port: int, quiet: bool) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with Simulator(config.cameras, control_host, control_port) as sim:
        if not quiet:
            for camera in sim.cameras():
                typer.echo(f"{camera.id}\t{camera.masked_url()}\t{sim.control_url}")
        typer.echo(f"campatrol sim: {len(sim.cameras())} cameras, control at {sim.control_url}")
        await stop.wait()
    typer.echo("campatrol sim: stopped")
