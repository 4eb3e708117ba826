"""Helpers shared by the 2-process gloo tests (importable from spawned workers)."""

import socket


def free_port() -> int:
    """A TCP port on localhost that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
