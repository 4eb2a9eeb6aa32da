"""segmind-queue worker: settings, the Segmind client and its policies, and the actors."""
