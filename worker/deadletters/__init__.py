"""Dead letters: why a message was given up on and what replaying it would do (``rules``,
pure), recording the reasons as Dramatiq gives up (``middleware``), and browsing and
replaying the ``.XQ`` queues (``queues``). The commands are ``console.dlq``."""
