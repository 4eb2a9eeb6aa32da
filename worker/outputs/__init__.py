"""Copies of a job's output files in storage the user owns (``OUTPUT_STORE``)."""
