"""The output host and the S3-compatible server (``tests/output_host.py``)."""

from tests.output_host import host, output_host, s3_endpoint

__all__ = ["host", "output_host", "s3_endpoint"]
