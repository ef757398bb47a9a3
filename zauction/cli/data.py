"""`zauction data ...`: commands about a node's data directory, run offline.

`register(app)` adds the `data` sub-app to the main CLI. Like every command, these only parse
arguments, call the library (zauction.tools.datadir) and print through zauction.cli.console.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brokerless.storage import StorageError
from zauction.cli import console, params
from zauction.cli.console import CliError, ExitCode, emit_json, errors, out
from zauction.tools.datadir import DataDirReport, inspect_data_dir


def register(app: typer.Typer) -> None:
    """Add `data inspect` (and future data commands) to `app`."""
    data_app = typer.Typer(help="Look at a node's data directory (offline, read-only).",
                           no_args_is_help=True)
    data_app.command("inspect", epilog="Example: zauction data inspect data/localhost_8001 "
                                       "--json.  " + params.EPILOG)(inspect_command)
    app.add_typer(data_app, name="data")


def inspect_command(
    directory: Annotated[Path, typer.Argument(
        metavar="DIR", help="A node's data directory (or its raft.db).")],
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print JSON instead of tables (a failure too).")] = False,
) -> None:
    """Verify a node's data directory and show its ids, log, snapshot and auctions.

    Read-only and safe while the node runs. Exits 5 if DIR is not a node's data directory
    or what it holds is corrupt (the message names the file and the problem)."""
    with errors(as_json):
        try:
            report = inspect_data_dir(directory)
        except StorageError as exc:
            raise CliError(f"cannot inspect {directory}: {exc}", ExitCode.DATA_DIR) from None
        except OSError as exc:  # no permission, a path through a file, ...
            raise CliError(f"cannot inspect {directory}: {exc.strerror or exc}",
                           ExitCode.DATA_DIR) from None
    if as_json:
        emit_json(report.to_dict())
        return
    out.print(console.summary_table(f"data directory {directory}", _summary_rows(report)))
    out.print(console.auctions_table(report.auctions))


def _summary_rows(report: DataDirReport) -> list[tuple[str, str]]:
    snap = report.snapshot
    files = ", ".join(f"{name} {size:,} B" for name, size in report.files)
    return [
        ("node", str(report.node_id)),
        ("cluster", str(report.cluster_id)),
        ("format version", str(report.format_version)),
        ("term / vote", f"{report.term} / {report.vote or '-'}"),
        ("commit", str(report.commit)),
        ("log", f"{report.first_index}..{report.last_index} ({report.entry_count} entries)"),
        ("snapshot", "none" if snap is None else
         f"index {snap.index}, term {snap.term}, {snap.size:,} bytes"),
        ("applied on top", f"{report.commands_applied} committed commands after the snapshot"),
        ("files", f"{files} (total {report.disk_bytes:,} B)"),
        ("checksums", "every row verified"),
    ]
