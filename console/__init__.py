"""segmind-queue's console: the ``segmind-queue`` command, the only place that assembles
every part (the worker, the simulator and the producers' SDK) for a person at a terminal."""
