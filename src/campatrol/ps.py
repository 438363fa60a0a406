"""`campatrol ps`: print the census as tables or JSON, and end orphans of dead instances."""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
import socket
import sys
import zoneinfo
from datetime import datetime
from pathlib import Path
from typing import Annotated

import psutil
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from campatrol.census import Census, CensusProcess, take_census
from campatrol.errors import ConfigError
from campatrol.procgroups import end_orphan, find_orphans

logger = logging.getLogger(__name__)

PIPE_WIDTH = 150
OWNER_LABELS = {"orphan": "orphan of dead campatrol", "foreign": "foreign"}


def ps_command(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config", "-c", help="campatrol TOML file: its cameras get a row, its zone is used."
        ),
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="IANA zone to show times in (default: config, host)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output, times in UTC.")] = False,
    kill_orphans: Annotated[
        bool,
        typer.Option(
            "--kill-orphans", help="End processes of dead campatrol instances (never others)."
        ),
    ] = False,
    instance: Annotated[
        str | None,
        typer.Option("--instance", help="With --kill-orphans: only orphans of this instance id."),
    ] = None,
) -> None:
    """List capture processes and RTSP connections on this host, grouped by camera."""
    # Like `ps ww`: piped output is not cut at 80 columns, so scripts and docs see whole lines.
    console = Console() if sys.stdout.isatty() else Console(width=PIPE_WIDTH)
    cameras = []
    zone_name = timezone
    if config is not None:
        from campatrol.config import load_config

        try:
            loaded = load_config(config)
        except ConfigError as exc:
            raise _fail(str(exc)) from None
        cameras = loaded.cameras
        zone_name = zone_name or loaded.settings.timezone
        for problem in loaded.problems:
            # The camera is left out of the census rows; say so rather than drop it silently.
            Console(stderr=True, soft_wrap=True).print(
                Text.assemble(("problem:", "yellow"), f" {config}: {problem}; camera not listed")
            )
    if zone_name is None:
        from campatrol.config import host_timezone

        zone_name = host_timezone()
    try:
        zone = zoneinfo.ZoneInfo(zone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise _fail(f"--timezone {zone_name!r} is not an IANA time zone name") from None
    if instance is not None and not kill_orphans:
        raise _fail("--instance only applies with --kill-orphans")

    census = take_census(cameras)
    ended: list[int] = []
    survivors: list[int] = []
    if kill_orphans:
        ended, survivors = asyncio.run(_end_orphans(census, instance))

    if as_json:
        body = census.to_dict()
        if kill_orphans:
            body["ended"] = ended
            body["not_ended"] = survivors
        typer.echo(json.dumps(body, indent=2))
    else:
        _print_census(console, census, zone)
        if kill_orphans:
            _print_ended(console, census, ended, survivors, zone)
    if survivors:
        raise typer.Exit(1)


def _fail(message: str) -> typer.Exit:
    # Text, not markup: messages quote the user's file ("[server] port: ..").
    Console(stderr=True, soft_wrap=True).print(Text.assemble(("error:", "red"), " ", message))
    return typer.Exit(2)


async def _end_orphans(census: Census, instance: str | None) -> tuple[list[int], list[int]]:
    """End the census's orphans (of `instance` only, if given); return (ended, still alive)."""
    wanted = [p.pid for p in census.orphans if instance is None or p.instance == instance]
    # Look again right before signalling: a pid seen as an orphan a moment ago must still be
    # one (same marker rule, owner still dead), so a reused pid is never hit.
    still_orphans = set(await asyncio.to_thread(find_orphans, ""))
    targets = [pid for pid in wanted if pid in still_orphans]
    await asyncio.gather(*(end_orphan(pid) for pid in targets))
    survivors = [pid for pid in targets if _running(pid)]
    for pid in targets:
        if pid not in survivors:
            logger.info("orphan %s ended", pid)
    return [pid for pid in targets if pid not in survivors], survivors


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def format_time(value: datetime, zone: zoneinfo.ZoneInfo) -> str:
    """Return `value` in `zone` as `YYYY-MM-DD HH:MM:SS+HH:MM`, the offset always shown."""
    return value.astimezone(zone).isoformat(sep=" ", timespec="seconds")


def format_age(seconds: float) -> str:
    """Return a short age such as `42s`, `7m05s`, `5h02m` or `3d04h`."""
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def owner_label(process: CensusProcess) -> str:
    """Return who started a process, as shown to people."""
    if process.owner == "campatrol":
        return f"campatrol (pid {process.owner_pid})"
    return OWNER_LABELS[process.owner]


def short_command(process: CensusProcess) -> str:
    """Return the program and its (masked) camera URL; the full argv is in the JSON output."""
    if not process.argv:
        return process.name
    program = Path(process.argv[0]).name
    urls = [arg for arg in process.argv if "://" in arg]
    return shlex.join([program, *urls[:1]]) if urls else shlex.join(process.argv)[:120]


def _print_census(console: Console, census: Census, zone: zoneinfo.ZoneInfo) -> None:
    when = format_time(census.taken_at, zone)
    console.print(f"census of {socket.gethostname()} at {when} ({zone.key})", highlight=False)

    cameras = Table(title="cameras", title_justify="left", show_edge=False)
    cameras.add_column("camera", no_wrap=True)
    cameras.add_column("id")
    for column in ("procs", "campatrol", "orphan", "foreign", "conns"):
        cameras.add_column(column, justify="right")
    cameras.add_column("oldest", no_wrap=True)
    for row in census.cameras:
        counts = row.by_owner
        oldest = row.oldest
        cameras.add_row(
            row.camera,
            row.camera_id or "-",
            str(len(row.processes)),
            str(counts["campatrol"]),
            str(counts["orphan"]),
            str(counts["foreign"]),
            str(row.connections),
            "-" if oldest is None else f"pid {oldest.pid}, {format_age(oldest.age)}",
        )
    console.print(cameras)

    processes = Table(title="capture processes", title_justify="left", show_edge=False)
    processes.add_column("pid", justify="right", no_wrap=True)
    processes.add_column("camera", no_wrap=True)
    processes.add_column("started by", no_wrap=True)
    processes.add_column("started", no_wrap=True)
    processes.add_column("age", justify="right", no_wrap=True)
    processes.add_column("conns", justify="right")
    processes.add_column("command", overflow="fold")
    for process in census.processes:
        processes.add_row(
            str(process.pid),
            process.camera or "-",
            owner_label(process),
            format_time(process.started, zone),
            format_age(process.age),
            str(process.connections),
            short_command(process),
        )
    console.print(processes)

    totals = census.to_dict()["totals"]
    console.print(
        f"{totals['processes']} capture process(es): {totals['campatrol']} campatrol, "
        f"{totals['orphan']} orphan(s), {totals['foreign']} foreign; "
        f"{totals['connections']} RTSP connection(s) to {len(census.cameras)} camera(s)",
        highlight=False,
    )


def _print_ended(
    console: Console,
    census: Census,
    ended: list[int],
    survivors: list[int],
    zone: zoneinfo.ZoneInfo,
) -> None:
    by_pid = {process.pid: process for process in census.processes}
    if not ended and not survivors:
        console.print("no orphan to end")
    for pid in ended:
        process = by_pid[pid]
        console.print(
            f"ended orphan pid {pid} (camera {process.camera or '-'}, instance "
            f"{(process.instance or '')[:8]}, started {format_time(process.started, zone)})",
            highlight=False,
        )
    for pid in survivors:
        console.print(f"[red]orphan pid {pid} is still alive after SIGKILL[/red]")
