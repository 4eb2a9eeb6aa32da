"""The fuzz tests' options.

The options ``--fuzz-requests N`` (hostile messages the end-to-end fuzz publishes) and
``--fuzz-seed S`` (the same seed and count publish the same messages) are registered in
``tests/conftest.py``: ``pytest tests/fuzz --fuzz-requests 10000``. The figures are printed
in pytest's terminal summary (``tests.figures``).
"""
