"""``Closing``: the context-manager half of every class here that holds connections."""

from __future__ import annotations

from types import TracebackType
from typing import Self


class Closing:
    """A resource with ``close()``; ``with`` closes it on the way out, whatever happened."""

    def close(self) -> None:
        """Release the resource (subclasses implement it)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
