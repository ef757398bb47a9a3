"""`zauction demo`: the steps are zauction.tools.demo's; this module shows them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer

from zauction.cli import console
from zauction.cli.cluster import report_stops
from zauction.cli.console import CliError, ExitCode, errors, note, out
from zauction.cli.params import EPILOG, whole
from zauction.tools.cluster import ClusterHandle, StopReport, sigterm_as_interrupt
from zauction.tools.demo import BidOutcome, DemoReport, run_demo


def register(app: typer.Typer) -> None:
    app.command(epilog="Example: zauction demo --bids 40.  " + EPILOG)(demo)


def demo(
    nodes: Annotated[int, typer.Option(**whole(3, 9),
                                       help="Cluster size (3 or more).")] = 3,
    base_port: Annotated[int, typer.Option(
        **whole(1, 65535), help="First node's port; the others follow it.")] = 8001,
    bids: Annotated[int, typer.Option(**whole(2, 10_000),
                                      help="Bids to place in all.")] = 30,
) -> None:
    """Start a local cluster, bid, kill the leader, keep bidding, check every node agrees.

    Ctrl-C, SIGTERM or SIGHUP stops every node it started (SIGKILL after a deadline)."""
    if base_port + nodes - 1 > 65535:
        raise typer.BadParameter(f"{nodes} nodes from port {base_port} go past port 65535",
                                 param_hint="'--base-port'")
    with errors(), sigterm_as_interrupt():
        report = run_demo(Narrator(), nodes=nodes, base_port=base_port, bids=bids)
        print_report(report)
        if not report.agree:
            raise CliError("the surviving nodes do not agree on the result", ExitCode.REFUSED)


class Narrator:
    """The DemoObserver of the command line: a line per step, a progress bar per phase."""

    def started(self, handle: ClusterHandle) -> None:
        note(f"started {len(handle.nodes)} nodes: " + ", ".join(
            f"{n.addr} (pid {n.pid})" for n in handle.nodes))

    def leader_elected(self, leader: str) -> None:
        note(f"leader elected: [bold]{leader}[/]")

    @contextmanager
    def bidding(self, label: str, count: int) -> Iterator[Callable[[BidOutcome], None]]:
        with console.bid_progress() as progress:
            task = progress.add_task(label, total=count)
            yield lambda _: progress.advance(task)

    def leader_killed(self, addr: str) -> None:
        note(f"[red]killed the leader {addr} with SIGKILL[/]; bidding on")

    def failed_over(self, seconds: float) -> None:
        note(f"next bid acknowledged {seconds * 1000:.0f} ms after the kill")

    def stopped(self, reports: list[StopReport]) -> None:
        report_stops(reports)


def print_report(report: DemoReport) -> None:
    accepted = sum(o.accepted for o in report.outcomes)
    highest = report.expected.get("highest") or {}
    rows = [
        ("nodes", ", ".join(report.servers)),
        ("node pids", " ".join(str(p) for p in report.pids)),
        ("bids", f"{len(report.outcomes)} placed, {accepted} accepted, "
                 f"{len(report.outcomes) - accepted} rejected"),
        ("slowest bid", f"{max(o.seconds for o in report.outcomes) * 1000:.0f} ms"),
        ("leader killed", report.killed),
        ("new leader", report.new_leader or "unknown"),
        ("failover", f"{report.failover_s * 1000:.0f} ms from SIGKILL to the next accepted bid"),
        ("result", f"{highest.get('amount')} by {highest.get('bidder')} "
                   f"({report.expected.get('bids')} bids)"),
    ]
    for server, seen in report.results.items():
        same = seen == report.expected
        rows.append((f"read from {server}", ("[green]agrees[/]" if same else
                                              f"[red]DIFFERS[/]: {seen}")))
    rows.append(("total time", f"{report.elapsed_s:.1f} s"))
    out.print(console.summary_table("demo summary", rows))
