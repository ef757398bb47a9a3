"""The `zauction` command line: the typer app and its command groups, one module each.

Every command parses its arguments (zauction.cli.params), calls the library, and prints
through zauction.cli.console, whose `errors()` is the one place where our exceptions become a
message and an exit code (0 ok, 1 refused, 2 usage, 3 unavailable, 4 unknown auction,
5 data directory refused).
"""

from __future__ import annotations

import typer

from zauction.cli import auctions, cluster, data, demo, load, node, status
from zauction.cli.params import EPILOG

app = typer.Typer(
    name="zauction",
    help="A brokerless, replicated auction cluster on ZeroMQ.",
    epilog=EPILOG + "  Start with: zauction demo",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# In this order --help lists the commands (node, bid, result, history, status, watch, demo,
# load), then the groups (cluster, auction, data).
for group in (node, cluster, auctions, status, demo, load, data):
    group.register(app)
