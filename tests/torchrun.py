"""Run a 2-process gloo job under torchrun on a free port (tests only).

A fixed ``--master-port`` collides with any other torchrun on the machine (a second test session, a
leftover socket), and the test then fails with EADDRINUSE instead of testing anything.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    """A TCP port that is free on localhost right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(args: list[str], timeout: int = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run ``torch.distributed.run --nproc-per-node 2 <args>`` with one thread per process.

    Args:
        args: the script (or ``-m module``) and its arguments.
        timeout: seconds before the run is killed.
        cwd: working directory of the run.

    Returns:
        The completed process (stdout and stderr captured as text).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
