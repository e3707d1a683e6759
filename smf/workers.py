"""Run a server in N processes sharing one port (SO_REUSEPORT), so one server uses
every core: the kernel spreads new connections across the processes.

Used through ``Server.run(host, port, workers=N)``. The server (with its services) is
built once in the parent and inherited by each worker through ``fork``, before any
event loop exists, so handlers need nothing picklable.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from .loop import run

if TYPE_CHECKING:
    from .server import Server


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for tests and benchmarks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def serve_until_signalled(
    server: Server,
    host: str,
    port: int,
    *,
    reuse_port: bool,
    grace: float,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Listen, then stop gracefully on SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start(host, port, reuse_port=reuse_port)
    if on_listening is not None:
        on_listening()
    await stop.wait()
    await server.stop(grace)


def run_workers(
    server: Server,
    host: str,
    port: int,
    workers: int,
    grace: float = 5.0,
    on_listening: Callable[[], None] | None = None,
) -> int:
    """Serve in ``workers`` processes until SIGTERM/SIGINT; returns an exit status."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, not {workers}")
    if workers == 1:
        run(serve_until_signalled(server, host, port, reuse_port=False, grace=grace,
                                  on_listening=on_listening))  # fmt: skip
        return 0
    if port == 0:
        raise ValueError("workers > 1 need a fixed port (the processes must share it)")
    if not hasattr(socket, "SO_REUSEPORT"):
        raise RuntimeError("workers > 1 need SO_REUSEPORT, which this platform lacks")
    children: list[int] = []
    ready_r, ready_w = os.pipe()  # each worker writes one byte once it listens
    for _ in range(workers):
        pid = os.fork()
        if pid == 0:  # worker
            os.close(ready_r)
            status = 0
            try:
                run(
                    serve_until_signalled(
                        server,
                        host,
                        port,
                        reuse_port=True,
                        grace=grace,
                        on_listening=lambda: os.write(ready_w, b"."),  # type: ignore[arg-type]
                    )
                )
            except BaseException as exc:  # report, then leave without running parent code
                print(f"smf worker {os.getpid()}: {exc!r}", file=sys.stderr)
                status = 1
            finally:
                os._exit(status)
        children.append(pid)

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    os.close(ready_w)
    listening = 0
    while listening < workers:
        got = os.read(ready_r, workers)
        if not got:  # every worker exited before listening
            break
        listening += len(got)
    os.close(ready_r)
    if on_listening is not None and listening == workers:
        on_listening()
    status = 0
    try:
        for child in children:
            _, code = os.waitpid(child, 0)
            if os.waitstatus_to_exitcode(code) not in (0, -signal.SIGTERM, -signal.SIGINT):
                status = 1
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    return status
