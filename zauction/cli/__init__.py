"""The `zauction` command line: thin typer commands over the library."""
