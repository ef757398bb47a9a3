"""The cluster as its nodes see it: `status` (every node once) and `watch` (the live feed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import typer

from zauction.cli import console, params
from zauction.cli.console import emit_json, errors, out
from zauction.cli.params import DEFAULT_SERVERS, EPILOG, Json, Servers, Timeout
from zauction.client.client import ClusterUnavailable
from zauction.tools import cluster


def register(app: typer.Typer) -> None:
    app.command(epilog=EPILOG)(status)
    app.command(epilog="Example: zauction watch --json | jq .amount.  " + EPILOG)(watch)


def status_document(statuses: list[dict]) -> dict:
    return {"leader": cluster.leader_of(statuses), "nodes": statuses}


def show_status(servers: Sequence[str], timeout: float, as_json: bool) -> None:
    """Print every node's status (`zauction status`, `zauction cluster status`); exits 3 when
    no node answers."""
    with errors(as_json), cluster.open_client(servers, timeout=timeout,
                                              attempt_timeout=timeout) as client:
        statuses = client.status()
        if all(s.get("role") == "unreachable" for s in statuses):
            raise ClusterUnavailable(f"no node answered ({', '.join(servers)})")
    if as_json:
        emit_json(status_document(statuses))
    else:
        out.print(console.nodes_table(statuses))


def status(as_json: Json = False, servers: Servers = DEFAULT_SERVERS,
           timeout: Timeout = "1s") -> None:
    """Show every node: role, term, commit and applied index, last heartbeat."""
    show_status(params.parse_addr_list(servers), timeout, as_json)


def watch(auction: Annotated[str | None, typer.Option(
              "--auction", "-a", parser=params.name, help="Only this auction \\[default: all].")
          ] = None,
          as_json: Json = False, servers: Servers = DEFAULT_SERVERS,
          timeout: Timeout = "2s") -> None:
    """Follow the live feed of committed events until Ctrl-C."""
    addrs = params.parse_addr_list(servers)
    with errors(as_json), cluster.open_client(addrs, timeout=timeout,
                                              attempt_timeout=timeout) as client:
        if all(s.get("role") == "unreachable" for s in client.status()):
            raise ClusterUnavailable(f"no node answered ({', '.join(addrs)})")
        try:
            for event in client.watch(auction):
                if as_json:
                    emit_json(event)
                else:
                    out.print(console.event_text(event))
        except KeyboardInterrupt:
            return
