"""The `zauction` command line: the typer app and its command groups, one module each.

Every command parses its arguments (zauction.cli.params), calls the library, and prints
through zauction.cli.console, whose `errors()` is the one place where our exceptions become a
message and an exit code (0 ok, 1 refused, 2 usage, 3 unavailable, 4 unknown auction,
5 data directory refused or unusable). A command line with --json gets every failure as one
JSON object on stdout, usage errors included (JsonAwareGroup).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperGroup

from zauction.cli import auctions, cluster, console, data, demo, load, node, status
from zauction.cli.params import EPILOG

# click's ClickException (usage errors and the like), taken from typer's own BadParameter: typer
# 0.12-0.2x uses the click package, later versions a copy of their own.
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class JsonAwareGroup(TyperGroup):
    """The root command: when the command line asks for --json, a usage error (bad option,
    bad value, missing argument) is printed as console.error_doc on stdout, exit code 2, instead
    of click's text on stderr; a script reading the JSON never has to parse a usage box."""

    _json = False

    def main(self, args: Sequence[str] | None = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        self._json = "--json" in argv[:argv.index("--")] if "--" in argv else "--json" in argv
        return super().main(argv, *rest, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _CLICK_ERROR as exc:
            if not self._json:
                raise
            console.emit_json(console.error_doc(exc.exit_code, "usage", _usage_message(exc)))
            raise typer.Exit(exc.exit_code) from None


def _usage_message(exc: Any) -> str:
    message = exc.format_message()
    ctx = getattr(exc, "ctx", None)
    return f"{ctx.command_path}: {message}" if ctx is not None else message


app = typer.Typer(
    name="zauction",
    cls=JsonAwareGroup,
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
