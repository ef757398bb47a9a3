"""`python -m zauction ...` runs the command line."""

from __future__ import annotations

from zauction.cli.app import app

if __name__ == "__main__":
    app(prog_name="zauction")
