"""A free TCP port of 127.0.0.1 for a server a test starts later (the port is released when found)."""

from __future__ import annotations

import random
import socket

# Below the kernel's ephemeral range (32768-60999 by default), where every bind to port 0 and every
# outgoing connection of the test's own Ray cluster draws its ports, and above Ray's worker ports
# (10002-19999): between finding a port and binding it, nothing else on the machine is handed it.
LOW, HIGH = 20000, 32767


def free_port() -> int:
    for port in random.sample(range(LOW, HIGH), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port of 127.0.0.1 in {LOW}-{HIGH}")
