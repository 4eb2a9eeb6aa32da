"""A TCP server on 127.0.0.1 run by a thread of the test process, for tests that need a
peer to misbehave in ways no real server will (record who connects, never end a body).

Subclasses implement ``handle(connection)``; ``with Server() as server`` accepts on
``server.port`` until the block ends, one connection at a time.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from typing import Self


class TcpServer:
    """Accepts connections on an ephemeral port of 127.0.0.1 and hands each to ``handle``.

    Args:
        connection_timeout_s: the socket timeout of each accepted connection.
    """

    def __init__(self, *, connection_timeout_s: float = 5.0) -> None:
        self.connection_timeout_s = connection_timeout_s
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(16)
        # Accept wakes this often to see whether the server is being stopped.
        self._socket.settimeout(0.1)
        self.port: int = self._socket.getsockname()[1]
        self.stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def handle(self, connection: socket.socket) -> None:
        """Serve one connection (closed after it returns)."""
        raise NotImplementedError

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stopping.set()
        self._thread.join(timeout=10)
        self._socket.close()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(self.connection_timeout_s)
                self.handle(connection)
