"""`zauction cluster up/down/status`: a local cluster of node processes (zauction.tools.cluster)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from brokerless.storage import Durability
from zauction.auction.domain import MAX_RETAINED_BIDS
from zauction.cli import console, params
from zauction.cli.console import errors, note, out
from zauction.cli.params import EPILOG, DataRoot, Json, Timeout
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
    nodes: Annotated[int, typer.Option(min=1, max=15, help="How many nodes.")] = 3,
    base_port: Annotated[int, typer.Option(min=1, max=65535, help="First node's port.")] = 8001,
    host: Annotated[str, typer.Option(help="Host the nodes listen on.")] = "localhost",
    data_dir: DataRoot = Path("data"),
    auction_duration: Annotated[int, typer.Option(parser=params.duration_ms, metavar="DURATION",
                                                  help="Default auction length.")] = "100s",
    durability: Annotated[Durability, typer.Option()] = Durability.ALWAYS,
    max_retained_bids: Annotated[int, typer.Option(
        min=1, help="Bid records each node keeps (see `zauction node --help`).")
    ] = MAX_RETAINED_BIDS,
    detach: Annotated[bool, typer.Option(
        "--detach", help="Return once a leader is elected, leaving the nodes running.")] = False,
) -> None:
    """Start a local cluster and show its nodes live; Ctrl-C stops them all."""
    with errors(), local.sigterm_as_interrupt():
        handle = local.start_cluster(data_dir.resolve(), nodes=nodes, base_port=base_port,
                                     host=host, auction_duration_ms=auction_duration,
                                     durability=durability.value,
                                     node_args=[f"--max-retained-bids={max_retained_bids}"])
        try:
            _run_cluster(handle, detach)
        except BaseException:
            stop_and_report(handle)
            raise
        if not detach:
            stop_and_report(handle)


def _run_cluster(handle: local.ClusterHandle, detach: bool) -> None:
    note(f"started {len(handle.nodes)} nodes (pids "
         f"{' '.join(str(n.pid) for n in handle.nodes)}); logs in {handle.root}")
    local.wait_for_leader(handle.servers, time.monotonic() + LEADER_DEADLINE_S, handle)
    client = local.open_client(handle.servers, timeout=1.0, attempt_timeout=0.3)
    if detach:
        out.print(console.nodes_table(client.status()))
        client.close()
        note(f"running; stop with: zauction cluster down --data-dir {handle.root}")
        return
    try:
        console.live_nodes(client.status, "nodes (Ctrl-C stops them)")
    except KeyboardInterrupt:
        pass
    finally:
        client.close()


def report_stops(reports: list[local.StopReport]) -> None:
    for report in reports:
        note(f"{report.addr} (pid {report.pid}): {report.outcome}")


def stop_and_report(handle: local.ClusterHandle) -> None:
    report_stops(local.stop_cluster(handle))
    (handle.root / local.CLUSTER_FILE).unlink(missing_ok=True)


def cluster_down(data_dir: DataRoot = Path("data")) -> None:
    """Stop the cluster recorded in DATA_DIR/cluster.json (SIGTERM, then SIGKILL)."""
    with errors():
        handle = local.load_cluster(data_dir.resolve())
        stop_and_report(handle)


def cluster_status(data_dir: DataRoot = Path("data"), as_json: Json = False,
                   timeout: Timeout = "1s") -> None:
    """Status of the nodes recorded in DATA_DIR/cluster.json."""
    with errors():
        handle = local.load_cluster(data_dir.resolve())
    show_status(handle.servers, timeout, as_json)
