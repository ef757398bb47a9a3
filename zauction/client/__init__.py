"""Talking to a cluster: the request client and the live feed (never imports the server)."""
