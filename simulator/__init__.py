"""A local Segmind simulator: a real HTTP server reproducing the workflow API and its quirks.

Run it with ``segmind-queue simulator`` (``simulator.cli``), embed it with
``simulator.testing.run_simulator``, or build the ASGI app with ``simulator.app.create_app``.
"""

from simulator.config import HttpFault, JobFault, SimulatorConfig

__all__ = ["HttpFault", "JobFault", "SimulatorConfig"]
