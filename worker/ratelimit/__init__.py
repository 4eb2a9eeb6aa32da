"""The fleet's shared rate: the token bucket's pure arithmetic (``bucket``) and the limiters
that hold a bucket in Redis or in memory (``limiter``)."""
