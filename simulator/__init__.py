"""A local Segmind simulator: a real HTTP server reproducing the workflow API and its quirks.

Run it with ``segmind-queue simulator`` (``simulator.cli``), embed it with
``simulator.testing.run_simulator``, or build the ASGI app with ``simulator.app.create_app``.

The domain, free of HTTP: ``simulator.state`` (jobs, credits, counters, the
``SimulatorState`` the app owns), ``simulator.outputs`` (what a job produces, how long it
takes), ``simulator.timeline`` (a job's planned timeline), ``simulator.ratelimit`` (the
rate window), ``simulator.faults`` (the active fault rules; their models are in
``simulator.config``).

Its HTTP server (starlette, uvicorn) is the ``simulator`` extra: ``pip install
'segmind-queue[simulator]'``. Without it, ``require_server`` says so in one line.
"""

import importlib.util

from simulator.config import HttpFault, JobFault, SimulatorConfig

__all__ = [
    "HttpFault",
    "JobFault",
    "SimulatorConfig",
    "SimulatorExtraMissingError",
    "require_server",
]


class SimulatorExtraMissingError(RuntimeError):
    """The simulator's server libraries are not installed."""


def require_server() -> None:
    """Check that the simulator's HTTP server can run.

    Raises:
        SimulatorExtraMissingError: starlette or uvicorn is missing; the message says which
            extra installs them.
    """
    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise SimulatorExtraMissingError(
            f"the simulator needs {' and '.join(missing)}: pip install 'segmind-queue[simulator]'"
        )
