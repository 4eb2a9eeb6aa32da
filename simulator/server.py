"""Running the simulator under uvicorn, in the foreground (the CLI) or a thread (tests)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

import uvicorn

from simulator.app import SimulatorApp, create_app
from simulator.config import SimulatorConfig


def uvicorn_config(
    app: SimulatorApp, config: SimulatorConfig, *, log_level: str = "info", **extra: Any
) -> uvicorn.Config:
    """The uvicorn config that serves ``app`` on ``config.host:config.port``.

    Access logs follow ``config.access_log`` (they show paths, never headers, so never
    the API key). ``extra`` goes to ``uvicorn.Config`` as is.
    """
    return uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level=log_level,
        access_log=config.access_log,
        lifespan="off",
        # Injected delays may hold requests; do not let them hold a shutdown for long.
        timeout_graceful_shutdown=2,
        **extra,
    )


def bound_url(server: uvicorn.Server, host: str) -> str:
    """``http://host:port`` of a started server, with the port it really bound (port 0).

    Raises:
        RuntimeError: the server has no listening socket (not started).
    """
    for listener in getattr(server, "servers", []):
        for sock in listener.sockets:
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                port = sock.getsockname()[1]
                shown = f"[{host}]" if ":" in host else host
                return f"http://{shown}:{port}"
    raise RuntimeError("the simulator is not listening")


def serve(config: SimulatorConfig, *, on_started: Callable[[str], None] | None = None) -> None:
    """Serve the simulator until interrupted (SIGINT/SIGTERM): blocks the calling thread.

    Args:
        config: what to simulate and where to listen (port 0: any free port).
        on_started: called once with the listening URL (e.g. ``http://127.0.0.1:8765``).

    Raises:
        SystemExit: uvicorn could not bind the address.
    """
    server = uvicorn.Server(uvicorn_config(create_app(config), config))

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            # uvicorn exposes no startup event; this only waits for the bind to finish.
            await asyncio.sleep(0.01)
        if server.started and on_started is not None:
            on_started(bound_url(server, config.host))
        await task

    asyncio.run(main())
