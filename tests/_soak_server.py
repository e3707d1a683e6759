"""A test server in its own process, for the soak, hostile-input and memory tests.

Run as ``python tests/_soak_server.py '{"max_body_size": 1048576, ...}'``: the JSON
object holds ``smf.Server`` keyword arguments. The server listens on 127.0.0.1 (port
chosen by the kernel), prints ``PORT <n>`` on stdout once it is listening, and serves
until SIGTERM/SIGINT or end of stdin.

Wire ids (ECHO and SLEEP match tests/conftest.py):

- ECHO: returns the request.
- SLEEP: body is ASCII seconds (0..60); sleeps, then returns a copy of the body.
- BLOCK: waits until RELEASE is called, then answers ``b"released"``.
- RELEASE: opens BLOCK's gate (and closes a new one for later BLOCK calls).
- DROP: answers, then aborts the calling connection from the server side.
- STATS: JSON of the server's state (body ``b"gc"`` runs ``gc.collect()`` first). The
  STATS call finishes in its first step, so it has no task and no budget charge (the
  budget counts requests whose handlers wait): an idle server reports 0 for both.

Anything that escapes into the event loop's exception handler, and every log record at
ERROR or above, is counted (``loop_errors``, ``log_errors``) and printed to stderr: a
test asserts both stay 0 (no crash inside a protocol callback, no handler blow-up).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import sys
from typing import Any

import smf
import smf.server
import smf.wire

ECHO = 0x0E0C0001
SLEEP = 0x0E0C0002
BLOCK = 0x0E0C00B1
RELEASE = 0x0E0C00B2
DROP = 0x0E0C00B3
STATS = 0x0E0C00B4


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class _ErrorCounter(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        sys.stderr.write(f"[soak-server] {self.format(record)}\n")


async def serve(config: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    loop_errors = 0

    def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        nonlocal loop_errors
        loop_errors += 1
        sys.stderr.write(f"[soak-server] loop error: {context.get('message')} {context}\n")

    loop.set_exception_handler(on_loop_error)
    errors = _ErrorCounter()
    logging.getLogger().addHandler(errors)
    logging.getLogger("smf").setLevel(logging.ERROR)  # refusals/bad frames: expected here

    server = smf.Server(**config)
    gate = asyncio.Event()

    async def echo(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        return body

    async def sleep(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        data = bytes(body)
        try:
            seconds = float(data)
        except ValueError:
            seconds = -1.0
        if not 0.0 <= seconds <= 60.0:  # hostile bodies: 400, not a logged 500
            raise smf.BadRequest("SLEEP takes ASCII seconds within 0..60")
        await asyncio.sleep(seconds)
        return data

    async def block(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        await gate.wait()
        return b"released"

    async def release(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        nonlocal gate
        gate.set()
        gate = asyncio.Event()
        return b"ok"

    async def drop(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        for conn in list(server.connections):
            if conn.peer == ctx.peer:
                loop.call_later(0.001, conn.abort)
        return b"dropping"

    async def stats(ctx: smf.CallContext, body: memoryview) -> smf.Payload:
        if bytes(body) == b"gc":
            gc.collect()
        s = server.stats
        report = {
            "pid": os.getpid(),
            "connections": len(server.connections),
            "tasks": len(server.tasks),
            "in_flight": sum(len(c.in_flight) for c in server.connections),
            "budget_used": server.budget.used,
            "budget_peak": server.budget.peak,
            "buffered": sum(c.protocol.buffered for c in server.connections),
            "rss": rss_bytes(),
            "fds": open_fds(),
            "loop_errors": loop_errors,
            "log_errors": errors.count,
            "asyncio_tasks": len(asyncio.all_tasks()),
            "stats": {
                "connections_accepted": s.connections_accepted,
                "connections_open": s.connections_open,
                "connections_refused": s.connections_refused,
                "requests": s.requests,
                "responses": {str(k): v for k, v in s.responses.items()},
                "bad_frames": s.bad_frames,
                "stalled_connections": s.stalled_connections,
                "oversized_requests": s.oversized_requests,
                "no_route": s.no_route,
                "idle_closed": s.idle_closed,
                "overloaded": s.overloaded,
            },
        }
        return json.dumps(report).encode()

    for wire_id, handler in {
        ECHO: echo,
        SLEEP: sleep,
        BLOCK: block,
        RELEASE: release,
        DROP: drop,
        STATS: stats,
    }.items():
        server.add_handler(wire_id, handler, "Soak")

    await server.start("127.0.0.1", 0)
    sys.stdout.write(f"PORT {server.port}\n")
    sys.stdout.flush()

    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    # End of stdin (the test process died or closed the pipe) also stops the server.
    stdin = sys.stdin.fileno()

    def on_stdin() -> None:
        if not os.read(stdin, 4096):
            loop.remove_reader(stdin)
            done.set()

    loop.add_reader(stdin, on_stdin)
    await done.wait()
    gate.set()
    await server.stop(grace=1.0)


# --------------------------------------------------------------------------- test side


class ServerProcess:
    """Starts this script in a child process; ``port``, ``pid``, ``rss()``, ``fds()``."""

    def __init__(self, config: dict[str, Any] | None = None, start_timeout: float = 30.0) -> None:
        import selectors
        import subprocess
        from pathlib import Path

        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), json.dumps(config or {})],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=root,
            env=env,
        )
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(start_timeout):
                self.proc.kill()
                raise RuntimeError(f"test server did not start within {start_timeout}s")
        line = self.proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"test server failed to start (said {line!r})")
        self.port = int(line.split()[1])
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout``; the exit code (None if it had to be
        killed)."""
        import subprocess

        code: int | None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                code = None
        else:
            code = self.proc.returncode
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        return code


def main() -> None:
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    smf.run(serve(config))


if __name__ == "__main__":
    main()
