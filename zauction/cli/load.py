"""`zauction load`: bid hard against a cluster, report throughput and latency, and optionally
check afterwards that nothing acknowledged was lost and the history is linearizable.

zauction.cli.app calls `register(app)`; this module only parses, shows progress and prints: the
work is in zauction.tools.loadgen (the load) and zauction.tools.checker (the verdict).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from zauction.cli import console, params
from zauction.cli.console import CliError, ExitCode, emit_json, errors, out
from zauction.cli.params import DEFAULT_SERVERS, Servers
from zauction.tools.checker import Verdict, check
from zauction.tools.loadgen import (
    OP_TIMEOUT_S,
    LoadError,
    LoadProgress,
    LoadResult,
    LoadUnavailable,
    read_final_states,
    run_load,
)

MAX_VIOLATIONS_SHOWN = 10
MAX_RATE = 10_000_000.0  # offered bids per second: far beyond any cluster, short of absurd


def register(app: typer.Typer) -> None:
    """Add the `load` command to the zauction app."""
    app.command("load", epilog="Example: zauction load --concurrency 100 --duration 30s "
                               "--check.  " + params.EPILOG)(load)


def load(
    bidders: Annotated[int, typer.Option(**params.whole(1, 100_000),
                                         help="Bidders, each its own client id.")] = 100,
    duration: Annotated[float, typer.Option(
        parser=params.load_duration_s, metavar="DURATION",
        help="How long to offer load: 30s, 2m (a bare number is seconds); at most a day.")
    ] = "30s",
    rate: Annotated[float | None, typer.Option(
        **params.decimal(0.001, MAX_RATE),
        help="Open loop: offered bids per second (latency counts lateness).")] = None,
    concurrency: Annotated[int | None, typer.Option(
        **params.whole(1, 100_000),
        help="Closed loop: bids in flight \\[default: --bidders].")] = None,
    auctions: Annotated[int, typer.Option(**params.whole(1, 10_000),
                                          help="Auctions to spread the bidders over.")] = 1,
    history: Annotated[Path | None, typer.Option(
        help="Write every operation to FILE as JSON lines.", metavar="FILE")] = None,
    check_after: Annotated[bool, typer.Option(
        "--check", help="Afterwards read every node and check for lost bids and "
                        "linearizability; exit 1 on any violation.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    servers: Servers = DEFAULT_SERVERS,
    op_timeout: Annotated[float, typer.Option(
        parser=params.timeout_s, metavar="DURATION",
        help="Give up on a bid (outcome unknown) after this long (a bare number is seconds; "
             "at most 7 days).")] = f"{OP_TIMEOUT_S:g}s",
) -> None:
    """Offer bids at a rate or concurrency; report throughput, latency, errors."""
    if rate is not None and concurrency is not None:
        raise typer.BadParameter("give --rate or --concurrency, not both",
                                 param_hint="'--rate' / '--concurrency'")
    addrs = params.parse_addr_list(servers)
    if rate is None and concurrency is None:
        concurrency = bidders
    with errors(as_json), _load_errors():
        result = _run(addrs, bidders, duration, rate, concurrency, auctions, history,
                      check_after, as_json, op_timeout)
        verdict, unreachable = _check(addrs, result) if check_after else (None, ())
    if verdict is not None:
        result = replace(result, lost=verdict.lost)
    _print(result, verdict, unreachable, as_json)
    if verdict is not None and not verdict.ok:
        raise typer.Exit(int(ExitCode.REFUSED))


@contextmanager
def _load_errors() -> Iterator[None]:
    """LoadError -> the CLI's one error path (usage, or unavailable)."""
    try:
        yield
    except LoadUnavailable as exc:
        raise CliError(str(exc), ExitCode.UNAVAILABLE) from exc
    except LoadError as exc:
        raise CliError(str(exc), ExitCode.USAGE) from exc


def _run(addrs: list[str], bidders: int, duration: float, rate: float | None,
         concurrency: int | None, auctions: int, history: Path | None, keep_ops: bool,
         quiet: bool, op_timeout: float) -> LoadResult:
    kwargs: dict[str, Any] = dict(bidders=bidders, duration_s=duration, rate=rate,
                                  concurrency=concurrency, auctions=auctions,
                                  history_path=str(history) if history else None,
                                  keep_ops=keep_ops, op_timeout_s=op_timeout,
                                  attempt_timeout_s=min(1.0, op_timeout))
    if quiet:
        return run_load(addrs, **kwargs)
    with _progress_bar() as bar:
        task = bar.add_task("load", total=duration, rate=0.0, acked=0, rejected=0, failed=0,
                            p99=0.0)

        def show(p: LoadProgress) -> None:
            bar.update(task, completed=min(p.elapsed_s, p.duration_s), rate=p.rate,
                       acked=p.acked, rejected=p.rejected, failed=p.failed, p99=p.p99_ms,
                       description="load" if p.elapsed_s < p.duration_s else "draining")

        return run_load(addrs, on_progress=show, **kwargs)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"), BarColumn(bar_width=20), TimeElapsedColumn(),
        TextColumn("{task.fields[rate]:>8.0f}/s  acked {task.fields[acked]}  "
                   "rejected {task.fields[rejected]}  failed {task.fields[failed]}  "
                   "p99 {task.fields[p99]:.1f} ms"),
        console=out, transient=False)


def _check(addrs: list[str], result: LoadResult) -> tuple[Verdict, tuple[str, ...]]:
    finals = read_final_states(addrs, result.auctions)
    return check(result.ops or (), finals.states), finals.unreachable


# --- output -------------------------------------------------------------------------------------


def _print(result: LoadResult, verdict: Verdict | None, unreachable: tuple[str, ...],
           as_json: bool) -> None:
    if as_json:
        doc = result.to_dict()
        if verdict is not None:
            doc["check"] = {**verdict.to_dict(), "unreachable": list(unreachable)}
        emit_json(doc)
        return
    out.print(console.summary_table("load", _rows(result)))
    if verdict is not None:
        out.print(console.summary_table("check", _check_rows(verdict, unreachable)))


def _rows(result: LoadResult) -> list[tuple[str, str]]:
    d = result.to_dict()
    lat = result.latency_ms
    mode = (f"open loop, {d['offered_rate']:g} bids/s offered" if "offered_rate" in d
            else f"closed loop, {d['concurrency']} in flight")
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(result.rejected_reasons.items()))
    return [
        ("mode", f"{mode}; {result.bidders} bidders on {len(result.auctions)} auction(s)"),
        ("duration", f"{result.duration_s:g} s"),
        ("throughput", f"{result.throughput:,.0f} bids/s committed (acked + rejected)"),
        ("acked", str(result.acked)),
        ("rejected", f"{result.rejected}" + (f" ({reasons})" if reasons else "")),
        ("failed (unknown)", str(result.failed)),
        ("latency ms", f"p50 {lat['p50']:.2f}  p90 {lat['p90']:.2f}  p99 {lat['p99']:.2f}  "
                       f"p99.9 {lat['p999']:.2f}  max {lat['max']:.2f}"),
        ("errors", ", ".join(f"{k} {v}" for k, v in result.errors.items()) or "none"),
        ("leader changes", str(result.leader_changes)),
    ]


def _check_rows(verdict: Verdict, unreachable: tuple[str, ...]) -> list[tuple[str, str]]:
    rows = [("verdict", "[green]ok[/]" if verdict.ok else "[bold red]VIOLATIONS[/]"),
            ("lost", str(verdict.lost)), ("checked ops", str(verdict.checked_ops))]
    if unreachable:
        rows.append(("not compared", ", ".join(unreachable) + " (unreachable)"))
    for i, violation in enumerate(verdict.violations[:MAX_VIOLATIONS_SHOWN], start=1):
        rows.append((f"violation {i}", escape(violation)))
    if len(verdict.violations) > MAX_VIOLATIONS_SHOWN:
        rows.append(("…", f"{len(verdict.violations) - MAX_VIOLATIONS_SHOWN} more"))
    return rows
