"""A job's result: deciding it from the ledger record (``build``, pure) and publishing it,
or a dead letter, with publisher confirms (``publish``)."""
