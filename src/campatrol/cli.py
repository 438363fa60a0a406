"""campatrol's command line: run, demo, snap, check-config, sim, ps."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

from campatrol.errors import FAILURE_CLASSES, CampatrolError, ConfigError

app = typer.Typer(
    name="campatrol",
    help="Patrol IP cameras for still images without leaking processes or camera sessions.",
    no_args_is_help=True,
    add_completion=False,
)
# Soft wrap: a message or URL stays on one line for grep and scripts, whatever the width
# (a pipe or CI log gets 80 columns); the terminal wraps it for people.
console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

# `campatrol snap` exit statuses: 0 on success, 2 for a bad command line or config file,
# then one status per failure class, so scripts can branch on the reason.
EXIT_USAGE = 2
SNAP_EXIT: dict[str, int] = {name: 10 + i for i, name in enumerate(FAILURE_CLASSES)}

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="campatrol TOML file.", show_default=True)
]


def _setup_logging(verbose: bool) -> None:
    from campatrol.logs import configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO)


def _labelled(label: str, message: str) -> Text:
    # Text, not markup: messages quote the user's file ("[server] port: ..."), which rich
    # would otherwise take for style tags and drop.
    return Text.assemble((f"{label}:", "red"), " ", message)


def _fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err_console.print(_labelled("error", message))
    return typer.Exit(code)


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="campatrol TOML file.")] = Path("campatrol.toml"),
) -> None:
    """Validate a config file and list its cameras by subnet, with masked URLs."""
    from campatrol.config import group_by_subnet, load_config

    try:
        loaded = load_config(file)
    except ConfigError as exc:
        raise _fail(str(exc)) from None

    # Plain aligned lines rather than a table: a table fitted to 80 columns cut the URLs.
    for subnet, cameras in group_by_subnet(loaded.cameras).items():
        console.print(Text(f"subnet {subnet}", style="bold"))
        rows = [
            (
                cam.id,
                cam.name,
                cam.brand,
                f"{cam.max_sessions} slot(s)",
                f"deadline {cam.deadline:g}s",
                "enabled" if cam.enabled else "disabled",
                cam.masked_url(),
            )
            for cam in cameras
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            console.print(Text("  " + "  ".join([*cells, row[-1]])))
    console.print(f"{len(loaded.cameras)} camera(s) valid, {len(loaded.problems)} problem(s)")
    for problem in loaded.problems:
        err_console.print(_labelled("problem", f"{file}: {problem}"))
    if loaded.problems:
        raise typer.Exit(1)


@app.command("run")
def run(
    config: ConfigOption = Path("campatrol.toml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Patrol the configured cameras and serve the API and dashboard until interrupted."""
    from campatrol.config import load_config
    from campatrol.server import serve

    _setup_logging(verbose)
    log = logging.getLogger("campatrol")
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    for problem in loaded.problems:
        log.error("config %s: %s; camera skipped", config, problem)
    if not loaded.cameras:
        log.warning("config %s: no valid camera; serving an empty patrol", config)
    try:
        asyncio.run(serve(loaded.settings, loaded.cameras, loaded.problems))
    except CampatrolError as exc:
        raise _fail(str(exc), 1) from None


@app.command("demo")
def demo(
    port: Annotated[int, typer.Option(help="Dashboard and API port.", min=1, max=65535)] = 8080,
    duration: Annotated[
        float | None,
        typer.Option(help="Stop by itself after this many seconds (> 0).", min=0.1),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help="Keep data here (default: a temporary directory).")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Patrol 12 simulated cameras on 2 loopback subnets (2 of them faulty) with a dashboard."""
    from campatrol.demo import run_demo

    _setup_logging(verbose)
    try:
        asyncio.run(run_demo(port=port, duration=duration, data_dir=data_dir, console=console))
    except CampatrolError as exc:
        raise _fail(str(exc), 1) from None


@app.command("snap")
def snap(
    camera: Annotated[str, typer.Argument(help="Camera id from the config file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JPEG.")],
    config: ConfigOption = Path("campatrol.toml"),
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Capture one snapshot of one camera; the exit status names the failure class."""
    from campatrol.config import load_config
    from campatrol.oneshot import snap_once

    _setup_logging(verbose)
    try:
        loaded = load_config(config)
    except ConfigError as exc:
        raise _fail(str(exc)) from None
    if not output.parent.is_dir():
        raise _fail(f"--output {output}: directory {output.parent} does not exist")
    chosen = next((c for c in loaded.cameras if c.id == camera), None)
    if chosen is None:
        bad = [p for p in loaded.problems if p.camera_id == camera]
        reason = f": {bad[0]}" if bad else ""
        raise _fail(f"camera {camera!r} is not a valid camera of {config}{reason}")
    try:
        snapshot = asyncio.run(snap_once(loaded.settings, chosen, output))
    except CampatrolError as exc:
        failure = getattr(exc, "failure_class", None)
        err_console.print(_labelled(failure or "error", str(exc)))
        raise typer.Exit(SNAP_EXIT.get(failure or "", 1)) from None
    console.print(
        Text(
            f"{output}: {snapshot.width}x{snapshot.height}, {len(snapshot.jpeg)} bytes, "
            f"{snapshot.duration:.2f}s"
        )
    )


def _register_sim() -> None:
    from campatrol.sim.cli import sim_command

    app.command("sim", help="Run simulated RTSP cameras with injectable faults.")(sim_command)


_register_sim()


def _register_ps() -> None:
    from campatrol.ps import ps_command

    app.command("ps")(ps_command)


_register_ps()


def main() -> None:
    """Console entry point."""
    app()
