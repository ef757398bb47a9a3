"""The replicated application: a node process and the client service it runs."""
