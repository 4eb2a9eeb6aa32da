"""The benchmarks of issue 5 (rate budget and polling efficiency): ``python -m bench``.

See bench/README.md.
"""
