"""Network guard for command-line tests: Python imports this module at start-up when this
directory is on ``PYTHONPATH``. With ``LICEXP_NETWORK_LOG`` set, every Python-level name
lookup of another machine is written to that file and refused, so a test can assert that
a run never tried to reach the network (lookups in native code, e.g. wandb-core, pass
unseen)."""

from __future__ import annotations

import os
import socket

_LOCAL = {None, "", "localhost", "::1", socket.gethostname()}
_getaddrinfo = socket.getaddrinfo


def _local_only(host: str | bytes | None, *args: object, **kwargs: object) -> list:
    name = host.decode() if isinstance(host, bytes) else host
    if name not in _LOCAL and not str(name).startswith("127."):
        with open(os.environ["LICEXP_NETWORK_LOG"], "a", encoding="utf-8") as log:
            log.write(f"{name}\n")
        raise OSError(f"network access refused in a test: {name}")
    return _getaddrinfo(host, *args, **kwargs)


if os.environ.get("LICEXP_NETWORK_LOG"):
    socket.getaddrinfo = _local_only
