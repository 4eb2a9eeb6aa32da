"""The module Dramatiq's worker processes import: ``segmind-queue worker`` runs
``dramatiq worker.main``. Importing it builds the service's parts from the environment
(``worker.settings.Settings``) and makes its broker Dramatiq's global one.
"""

from __future__ import annotations

import dramatiq

from worker.app import create_app
from worker.logs import configure_logging
from worker.settings import Settings

configure_logging()
app = create_app(Settings())
broker = app.broker
dramatiq.set_broker(broker)
