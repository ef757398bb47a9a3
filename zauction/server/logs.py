"""Logging for a node: readable text by default, or one JSON object per line.

Text goes through rich when stderr is a terminal (colours, aligned columns) and through a
plain one-line formatter otherwise, so log files stay greppable and never wrap.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import TextIO

from rich.console import Console
from rich.logging import RichHandler

LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
TEXT_FORMAT = "%(asctime)s.%(msecs)03d %(levelname)-7s %(name)s: %(message)s"
TEXT_DATEFMT = "%Y-%m-%d %H:%M:%S"


class LogConfigError(ValueError):
    """An unknown log format or level."""


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "msg"} and, for an exception, "exc"; one line per record."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, tz=timezone.utc)
        doc = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def make_handler(fmt: str, stream: TextIO) -> logging.Handler:
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler(stream)
        handler.setFormatter(JsonFormatter())
    elif stream.isatty():
        handler = RichHandler(console=Console(file=stream), show_path=False,
                              log_time_format="[%X]", omit_repeated_times=False)
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, TEXT_DATEFMT))
    return handler


def setup_logging(fmt: str = "text", level: str = "INFO", stream: TextIO | None = None) -> None:
    """Replace the root logger's handlers with one writing `fmt` at `level` to `stream`."""
    if fmt not in LOG_FORMATS:
        raise LogConfigError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {fmt!r}")
    if level.upper() not in LOG_LEVELS:
        raise LogConfigError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(make_handler(fmt, stream or sys.stderr))
    root.setLevel(level.upper())
