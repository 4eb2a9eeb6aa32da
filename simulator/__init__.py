"""A local Segmind simulator: a real HTTP server reproducing the workflow API and its quirks.

Run it with ``segmind-queue simulator`` (``simulator.cli``), embed it with
``simulator.testing.run_simulator``, or build the ASGI app with ``simulator.app.create_app``.

The domain, free of HTTP: ``simulator.state`` (jobs, credits, counters, the
``SimulatorState`` the app owns), ``simulator.outputs`` (what a job produces, how long it
takes), ``simulator.timeline`` (a job's planned timeline), ``simulator.ratelimit`` (the
rate window), ``simulator.faults`` (the active fault rules; their models are in
``simulator.config``).
"""

from simulator.config import HttpFault, JobFault, SimulatorConfig

__all__ = ["HttpFault", "JobFault", "SimulatorConfig"]
