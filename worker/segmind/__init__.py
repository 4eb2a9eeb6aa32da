"""Everything that speaks to Segmind: the HTTP client (``client``), the classification of
its errors (``errors``) and the parsing of its answers (``responses``)."""
