"""`zauction cluster up/down/status`: a local cluster of node processes (zauction.tools.cluster)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from brokerless.storage import Durability
from zauction.auction.domain import MAX_RETAINED_BIDS
from zauction.cli import console, params
from zauction.cli.console import dir_errors, emit_json, errors, note, out, usable_dir
from zauction.cli.params import EPILOG, DataRoot, Json, Timeout, whole
from zauction.cli.status import show_status
from zauction.tools import cluster as local

LEADER_DEADLINE_S = 15.0


def register(app: typer.Typer) -> None:
    cluster_app = typer.Typer(help="Run a local cluster of node processes.", no_args_is_help=True)
    cluster_app.command("up", epilog="Example: zauction cluster up --nodes 3 --detach.  "
                                     + EPILOG)(cluster_up)
    cluster_app.command("down", epilog=EPILOG)(cluster_down)
    cluster_app.command("status", epilog=EPILOG)(cluster_status)
    app.add_typer(cluster_app, name="cluster")


def cluster_up(
    nodes: Annotated[int, typer.Option(**whole(1, 15), help="How many nodes.")] = 3,
    base_port: Annotated[int, typer.Option(
        **whole(1, 65535), help="First node's port; the others follow it.")] = 8001,
    host: Annotated[str, typer.Option(parser=params.parse_host,
                                      help="Host the nodes listen on.")] = "localhost",
    data_dir: DataRoot = Path("data"),
    auction_duration: Annotated[int, typer.Option(
        parser=params.auction_ms, metavar="DURATION",
        help="Default auction length (a bare number is seconds).")] = "100s",
    durability: Annotated[Durability, typer.Option()] = Durability.ALWAYS,
    max_retained_bids: Annotated[int, typer.Option(
        **whole(1), help="Bid records each node keeps (see `zauction node --help`).")
    ] = MAX_RETAINED_BIDS,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Return once a leader is elected, leaving the nodes running.")] = False,
) -> None:
    """Start a local cluster and show its nodes live; Ctrl-C, SIGTERM or SIGHUP stops them all.

    Each node gets SIGTERM, then SIGKILL if it is still running after 5 s. Exits 5 if DATA_DIR cannot be used (not a directory, no permission)."""  # noqa: E501 (typer keeps a paragraph's line breaks)
    if base_port + nodes - 1 > 65535:
        raise typer.BadParameter(f"{nodes} nodes from port {base_port} go past port 65535",
                                 param_hint="'--base-port'")
    root = data_dir.resolve()
    with errors(), local.sigterm_as_interrupt(), dir_errors(root):
        usable_dir(root)
        handle: local.ClusterHandle | None = None
        running = False
        try:
            with local.deferred_interrupts():  # an interrupt waits until the handle is ours
                handle = local.start_cluster(
                    root, nodes=nodes, base_port=base_port, host=host,
                    auction_duration_ms=auction_duration, durability=durability.value,
                    node_args=[f"--max-retained-bids={max_retained_bids}"])
            running = _run_cluster(handle, detach)
        finally:
            # Ctrl-C, a signal, an error, or the end of the live view: stop what started.
            if handle is not None and not running:
                stop_and_report(handle)


def _run_cluster(handle: local.ClusterHandle, detach: bool) -> bool:
    """Show the cluster; True if it is left running (--detach), False once it must stop."""
    note(f"started {len(handle.nodes)} nodes (pids "
         f"{' '.join(str(n.pid) for n in handle.nodes)}); logs in {handle.root}")
    local.wait_for_leader(handle.servers, time.monotonic() + LEADER_DEADLINE_S, handle)
    client = local.open_client(handle.servers, timeout=1.0, attempt_timeout=0.3)
    if detach:
        out.print(console.nodes_table(client.status()))
        client.close()
        note(f"running; stop with: zauction cluster down --data-dir {handle.root}")
        return True
    try:
        console.live_nodes(client.status, "nodes (Ctrl-C stops them)")
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return False


def report_stops(reports: list[local.StopReport]) -> None:
    for report in reports:
        note(f"{report.addr} (pid {report.pid}): {report.outcome}")


def stop_and_report(handle: local.ClusterHandle, quiet: bool = False) -> list[local.StopReport]:
    """Stop the nodes, forget the cluster file, then say so unless `quiet` (a failing stdout
    must not keep the nodes running)."""
    reports = local.stop_cluster(handle)
    (handle.root / local.CLUSTER_FILE).unlink(missing_ok=True)
    if not quiet:
        report_stops(reports)
    return reports


def load_recorded(root: Path) -> local.ClusterHandle:
    """The cluster recorded in ROOT/cluster.json; exit 5 if ROOT cannot be read at all."""
    with dir_errors(root):
        return local.load_cluster(root)


def cluster_down(data_dir: DataRoot = Path("data"), as_json: Annotated[bool, typer.Option(
        "--json", help="Print what was stopped as JSON (failures too).")] = False) -> None:
    """Stop the cluster recorded in DATA_DIR/cluster.json (SIGTERM, then SIGKILL)."""
    root = data_dir.resolve()
    with errors(as_json):
        reports = stop_and_report(load_recorded(root), quiet=as_json)
    if as_json:
        emit_json({"root": str(root), "nodes": [
            {"addr": r.addr, "pid": r.pid, "outcome": r.outcome} for r in reports]})


def cluster_status(data_dir: DataRoot = Path("data"), as_json: Json = False,
                   timeout: Timeout = "1s") -> None:
    """Status of the nodes recorded in DATA_DIR/cluster.json."""
    with errors(as_json):
        handle = load_recorded(data_dir.resolve())
    show_status(handle.servers, timeout, as_json)
