"""Hostile messages end to end: a real ``segmind-queue worker`` fed N fuzzed messages.

The messages (``tests.fuzz.strategies.hostile_messages``: requests that cannot be valid,
and broken Dramatiq messages) are published raw with plain pika to a fresh namespace's
requests queue. Every one must end:

- REJECTED on its private reply queue, with an error code and message, matched by
  correlation_id = request_id = the message's fuzz id, when it was built with a usable
  reply_to; or
- in the requests queue's ``.XQ`` with a reason (the ``x-segmind-dead-letter-reason``
  header), when it has none or is not a well-formed message, and ``segmind-queue dlq``'s
  reader (``worker.deadletters.queues.read_dead_letters``) gives every dead letter a reason;

exactly once, with no call to Segmind of any endpoint, the worker still running on the same
processes, no ERROR line or traceback in its log, and a valid request afterwards COMPLETED.

``--fuzz-requests`` sets N and ``--fuzz-seed`` the examples (see ``conftest.py``); the
figures are printed in pytest's terminal summary, and every message sent is written to
``messages.jsonl`` beside the worker's log. The last tests check the worker's envelope
screen alone (``worker.actors``), without a broker.
"""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings

from producers import wire
from producers.contract import Status
from simulator.testing import RunningSimulator, run_simulator
from tests import figures
from tests.conftest import simulator_test_config
from tests.e2e.conftest import Stack, Worker, new_stack
from tests.fuzz.strategies import IMAGE, Hostile, Route, hostile_messages, materialize
from worker.broker import _screened
from worker.deadletters.queues import read_dead_letters
from worker.results.publish import MemoryAmqp, ResultPublisher

#: Worker threads: the default of ``segmind-queue worker`` is 8; 4 suit the 2 test cores.
THREADS = 4


def generate(count: int, seed_value: int) -> list[Hostile]:
    """``count`` hostile messages, the same ones for the same seed: drawn by one
    ``@given`` run that only generates (no shrinking, no example database)."""
    drawn: list[Hostile] = []

    @seed(seed_value)
    @settings(
        max_examples=count,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(hostile_messages())
    def collect(hostile: Hostile) -> None:
        drawn.append(hostile)

    collect()
    return drawn[:count]


def descendants(pid: int) -> set[int]:
    """The process ids below ``pid`` (Linux ``/proc``)."""
    found: set[int] = set()
    pending = [pid]
    while pending:
        current = pending.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            with suppress(OSError):
                for child in (task / "children").read_text().split():
                    if int(child) not in found:
                        found.add(int(child))
                        pending.append(int(child))
    return found


@dataclass
class Published:
    """What was sent, by fuzz id."""

    cases: dict[str, Hostile] = field(default_factory=dict)
    bodies: dict[bytes, list[str]] = field(default_factory=lambda: defaultdict(list))


def publish(stack: Stack, cases: list[Hostile], reply_queue: str, run: str) -> Published:
    """Publish every case with plain pika (confirmed, persistent, mandatory), its AMQP
    ``message_id`` the case's fuzz id. Each is also written to ``messages.jsonl`` in the
    stack's log directory (fuzz id, kind, route, body), to reproduce a failure."""
    published = Published()
    record = (stack.log_dir / "messages.jsonl").open("w")
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        for number, case in enumerate(cases):
            fuzz_id = f"fz{run}-{number:05d}"
            body = materialize(
                case.body,
                fuzz_id=fuzz_id,
                reply_to=reply_queue,
                queue=stack.requests_queue,
                polls_queue=stack.polls_queue,
            )
            published.cases[fuzz_id] = case
            published.bodies[body].append(fuzz_id)
            line = {"id": fuzz_id, "kind": case.kind, "route": case.route, "body": repr(body)}
            record.write(json.dumps(line) + "\n")
            channel.basic_publish(
                "",
                stack.requests_queue,
                body,
                pika.BasicProperties(
                    delivery_mode=wire.PERSISTENT,
                    message_id=fuzz_id,
                    reply_to=reply_queue if case.reply_property else None,
                ),
                mandatory=True,
            )
    finally:
        connection.close()
        record.close()
    return published


@dataclass(frozen=True)
class Letter:
    """A message of the dead-letter queue: its AMQP ``message_id`` (the fuzz id: both the
    worker and RabbitMQ keep it), its body, and the reason the worker gave."""

    message_id: str | None
    body: bytes
    reason: str


@dataclass
class Answers:
    """What came back."""

    replies: list[tuple[str | None, dict[str, Any]]] = field(default_factory=list)
    letters: list[Letter] = field(default_factory=list)
    settled_after_s: float | None = None


def browse(amqp_url: str, queue: str) -> list[Letter]:
    """Every message of ``queue``, left in it (taken unacknowledged, then requeued)."""
    letters = []
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        while True:
            method, properties, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                break
            headers = properties.headers or {}
            reason = headers.get(wire.DEAD_LETTER_REASON_HEADER)
            letters.append(Letter(properties.message_id, body, str(reason or "")))
        channel.basic_nack(delivery_tag=0, multiple=True, requeue=True)
    finally:
        connection.close()
    return letters


def collect_answers(stack: Stack, reply_queue: str, count: int, timeout_s: float) -> Answers:
    """Consume the reply queue until the replies and the dead letters number ``count`` or
    ``timeout_s`` has passed; then browse the dead letters (left in their queue)."""
    answers = Answers()
    dead_letters = wire.dead_letter_queue(stack.requests_queue)
    started = time.monotonic()
    deadline = started + timeout_s
    connection = pika.BlockingConnection(pika.URLParameters(stack.amqp_url))
    try:
        channel = connection.channel()
        counting = connection.channel()
        channel.basic_qos(prefetch_count=500)
        seen_since_check = 0
        for method, properties, body in channel.consume(
            reply_queue, auto_ack=True, inactivity_timeout=0.2
        ):
            if method is not None:
                answers.replies.append((properties.correlation_id, json.loads(body)))
                seen_since_check += 1
                if seen_since_check < 200:
                    continue
            seen_since_check = 0
            letters = counting.queue_declare(dead_letters, passive=True).method.message_count
            if len(answers.replies) + letters >= count:
                answers.settled_after_s = time.monotonic() - started
                break
            if time.monotonic() > deadline:
                break
        channel.cancel()
    finally:
        connection.close()
    answers.letters = browse(stack.amqp_url, dead_letters)
    return answers


@dataclass
class Accounting:
    """Each fuzz id's answers."""

    replied: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def route_of(self, fuzz_id: str) -> Route | None:
        if self.replied[fuzz_id] and not self.dead_lettered[fuzz_id]:
            return Route.REPLY
        if self.dead_lettered[fuzz_id] and not self.replied[fuzz_id]:
            return Route.DEAD_LETTER
        return None


def account(published: Published, answers: Answers) -> Accounting:
    """Match every answer to the message it answers, checking its shape on the way."""
    books = Accounting()
    for correlation_id, result in answers.replies:
        fuzz_id = result.get("request_id")
        error = result.get("error") or {}
        if fuzz_id not in published.cases or correlation_id != fuzz_id:
            books.problems.append(f"a reply for no message: {correlation_id!r} {result!r:.300}")
            continue
        if result.get("status") != Status.REJECTED or not error.get("code"):
            books.problems.append(f"{fuzz_id}: not REJECTED with a code: {result!r:.300}")
        if not str(error.get("message", "")).strip():
            books.problems.append(f"{fuzz_id}: a rejection without a message")
        books.replied[fuzz_id] += 1
    bodies = {body: list(ids) for body, ids in published.bodies.items()}
    for letter in answers.letters:
        if letter.message_id in published.cases:
            fuzz_id = letter.message_id
        elif bodies.get(letter.body):
            fuzz_id = bodies[letter.body].pop(0)
        else:
            books.problems.append(
                f"a dead letter for no message: {letter.message_id!r} {letter.body!r:.200}"
            )
            continue
        if not letter.reason.strip():
            books.problems.append(f"{fuzz_id}: dead-lettered without a reason")
        books.dead_lettered[fuzz_id] += 1
    return books


def unexplained_by_dlq(stack: Stack) -> list[str]:
    """What ``worker.deadletters.queues.read_dead_letters`` (``segmind-queue dlq list``)
    cannot explain of the dead letters: letters without a reason, or the error reading them
    raised."""
    try:
        letters = read_dead_letters(stack.amqp_url, wire.dead_letter_queue(stack.requests_queue))
    except Exception as exc:  # the reader must read anything the worker dead-letters
        return [
            f"worker.deadletters.queues.read_dead_letters raised {type(exc).__name__}: {exc!s:.200}"
        ]
    return [f"{letter.id}: no reason" for letter in letters if not letter.reason.strip()]


def segmind_calls(sim: RunningSimulator) -> dict[str, int]:
    """Calls the simulator answered, by endpoint (every answer: 2xx, 4xx and 5xx)."""
    stats = sim.stats()
    calls = {name: sum(codes.values()) for name, codes in stats["responses"].items()}
    return {name: count for name, count in calls.items() if count}


def bad_log_lines(worker: Worker) -> list[str]:
    """Lines at ERROR or above, and tracebacks, in the worker's log."""
    found = [
        json.dumps(event)[:300]
        for event in worker.events()
        if str(event.get("level", "")).lower() in ("error", "critical") or event.get("exception")
    ]
    found += [line[:300] for line in worker.log().splitlines() if "Traceback" in line]
    return found


@dataclass
class FuzzRun:
    """One end-to-end fuzz run and what it measured."""

    stack: Stack
    worker: Worker
    published: Published
    books: Accounting
    calls: dict[str, int]
    alive: bool
    restarted: set[int]
    log_problems: list[str]

    def kinds(self, ids: list[str]) -> Counter[str]:
        return Counter(self.published.cases[fuzz_id].kind for fuzz_id in ids)

    @property
    def unaccounted(self) -> list[str]:
        return [i for i in self.published.cases if self.books.route_of(i) is None]

    @property
    def misrouted(self) -> list[str]:
        return [
            fuzz_id
            for fuzz_id, case in self.published.cases.items()
            if self.books.route_of(fuzz_id) not in (None, case.route)
        ]

    @property
    def repeated(self) -> list[str]:
        books = self.books
        return [i for i in self.published.cases if books.replied[i] + books.dead_lettered[i] > 1]


@pytest.fixture(scope="module")
def fuzz_simulator() -> Iterator[RunningSimulator]:
    """A simulator of the fuzz's own: a call from a worker another test left stopping on the
    session simulator (a credits read) cannot be counted as a hostile message's."""
    with run_simulator(simulator_test_config()) as running:
        yield running


@pytest.fixture(scope="module")
def fuzzed(
    amqp_url: str,
    redis_url: str,
    fuzz_simulator: RunningSimulator,
    namespace: str,
    tmp_path_factory: pytest.TempPathFactory,
    pytestconfig: pytest.Config,
) -> Iterator[FuzzRun]:
    """Generate the messages, start a worker on a fresh namespace, publish them all, and
    account for every answer (shared by this module's tests; the stack is removed after)."""
    count = int(pytestconfig.getoption("fuzz_requests"))
    seed_value = int(pytestconfig.getoption("fuzz_seed"))
    simulator = fuzz_simulator
    stack = new_stack(amqp_url, redis_url, simulator, namespace, tmp_path_factory.mktemp("fuzz"))
    reply_queue = f"{stack.name}.fuzz-replies"
    try:
        # The worker boots in its own process while the messages are generated here. No
        # credits reads: every call the simulator sees would be the fuzz's doing.
        with ThreadPoolExecutor(max_workers=1) as starter:
            starting = starter.submit(
                stack.start_worker, threads=THREADS, SEGMIND_CREDITS_INTERVAL_S="0"
            )
            began = time.monotonic()
            cases = generate(count, seed_value)
            generated_s = time.monotonic() - began
            worker = starting.result()
        processes = descendants(worker.process.pid)
        setup = pika.BlockingConnection(pika.URLParameters(amqp_url))
        setup.channel().queue_declare(reply_queue, durable=True)
        setup.close()
        sent_at = time.monotonic()
        published = publish(stack, cases, reply_queue, run=str(seed_value % 1000))
        publish_s = time.monotonic() - sent_at
        answers = collect_answers(stack, reply_queue, len(cases), 60 + len(cases) / 40)
        answered_s = time.monotonic() - sent_at
        alive = worker.process.poll() is None
        run = FuzzRun(
            stack=stack,
            worker=worker,
            published=published,
            books=account(published, answers),
            calls=segmind_calls(simulator),
            alive=alive,
            restarted=descendants(worker.process.pid) - processes if alive else processes,
            log_problems=bad_log_lines(worker),
        )
        expected = Counter(case.route for case in cases)
        replied = sum(1 for n in run.books.replied.values() if n)
        dead_lettered = sum(1 for n in run.books.dead_lettered.values() if n)
        lines = [
            f"seed {seed_value} (--fuzz-seed), {len(cases)} messages (--fuzz-requests), "
            f"{len(Counter(case.kind for case in cases))} kinds, generated in {generated_s:.1f} s",
            f"sent: {len(cases)} ({expected[Route.REPLY]} with a usable reply_to, "
            f"{expected[Route.DEAD_LETTER]} without one or not well-formed) "
            f"in {publish_s:.1f} s",
            f"REJECTED on the reply queue: {replied}; dead-lettered with a reason: {dead_lettered}",
            f"unaccounted (must be 0): {len(run.unaccounted)}; on the wrong route: "
            f"{len(run.misrouted)}; answered more than once: {len(run.repeated)}",
            f"Segmind calls (every endpoint): {sum(run.calls.values())} {run.calls or ''}",
            f"worker alive: {alive}; worker process restarts: {len(run.restarted)}; "
            f"ERROR lines or tracebacks in its log: {len(run.log_problems)}",
            f"all answered {answered_s:.1f} s after the first publish: "
            f"{len(cases) / answered_s:.0f} messages/s",
            "by kind: "
            + ", ".join(
                f"{kind} {n}" for kind, n in sorted(Counter(c.kind for c in cases).items())
            ),
        ]
        figures.record("hostile messages end to end", lines)
        print("\n".join(lines))
        yield run
    finally:
        cleanup = pika.BlockingConnection(pika.URLParameters(amqp_url))
        with suppress(pika.exceptions.AMQPError):
            cleanup.channel().queue_delete(reply_queue)
        cleanup.close()
        stack.cleanup()


def test_hostile_messages_are_answered_once_and_cost_nothing(fuzzed: FuzzRun) -> None:
    assert not fuzzed.books.problems, fuzzed.books.problems[:10]
    assert not fuzzed.unaccounted, f"unanswered, by kind: {fuzzed.kinds(fuzzed.unaccounted)}"
    assert not fuzzed.misrouted, f"on the wrong route, by kind: {fuzzed.kinds(fuzzed.misrouted)}"
    assert not fuzzed.repeated, f"answered twice, by kind: {fuzzed.kinds(fuzzed.repeated)}"
    assert fuzzed.calls == {}, f"hostile messages reached Segmind: {fuzzed.calls}"


def test_the_worker_survives_hostile_messages_and_still_works(fuzzed: FuzzRun) -> None:
    assert fuzzed.alive, fuzzed.worker.log()[-3000:]
    assert not fuzzed.restarted, f"worker processes replaced: {fuzzed.restarted}"
    assert not fuzzed.log_problems, fuzzed.log_problems[:5]
    [result] = fuzzed.stack.run(
        {"workflow": "sketch-maker", "inputs": {"input_image": IMAGE}}, timeout_s=60
    ).values()
    assert result.status is Status.COMPLETED, result


def test_the_dead_letter_reader_explains_every_fuzzed_dead_letter(fuzzed: FuzzRun) -> None:
    """``segmind-queue dlq``'s reader reads whatever the worker dead-lettered."""
    problems = unexplained_by_dlq(fuzzed.stack)
    assert not problems, problems[:5]


# ------------------------------------------------------------------ the screen, alone


@dataclass
class FakeChannel:
    """Records acknowledgements (the screen's only use of the consumer's channel)."""

    acked: list[int] = field(default_factory=list)

    def basic_ack(self, delivery_tag: int) -> None:
        self.acked.append(delivery_tag)


@dataclass
class FakeConsumer:
    channel: FakeChannel = field(default_factory=FakeChannel)


def deliveries(*bodies: bytes | None) -> Iterator[tuple[Any, Any, Any]]:
    """What pika's consume generator yields: a delivery per body, ``None`` for an idle
    moment."""
    for tag, body in enumerate(bodies, start=1):
        if body is None:
            yield None, None, None
        else:
            method = pika.spec.Basic.Deliver(delivery_tag=tag, routing_key="fuzz.requests")
            yield method, pika.BasicProperties(message_id=f"amqp-{tag}"), body


SCREEN_ACTORS = {wire.SUBMIT_ACTOR: "fuzz.requests", wire.POLL_ACTOR: "fuzz.polls"}


def test_the_screen_dead_letters_a_broken_message_and_passes_a_good_one() -> None:
    good = wire.encode(wire.request_envelope({"workflow": "x"}, queue_name="fuzz.requests"))
    amqp = MemoryAmqp()
    consumer = FakeConsumer()
    screened = list(
        _screened(
            consumer,
            deliveries(b"not json", None, good),
            "fuzz.requests",
            SCREEN_ACTORS,
            ResultPublisher(amqp, dead_letter_queue="fuzz.requests.XQ"),
        )
    )
    # The broken one is replaced by an idle moment; Dramatiq gets the others as they came.
    assert [item[0] is None for item in screened] == [True, True, False]
    assert screened[2][2] == good
    [letter] = amqp.queues["fuzz.requests.XQ"]
    assert letter.body == b"not json"
    assert letter.properties.message_id == "amqp-1"
    assert letter.properties.headers[wire.DEAD_LETTER_REASON_HEADER].startswith(
        "the body is not JSON"
    )
    assert consumer.channel.acked == [1]


class FailingAmqp:
    def publish(self, queue: str, body: bytes, properties: Any, **_: Any) -> None:
        raise ConnectionError("RabbitMQ went away")


def test_a_message_whose_dead_letter_fails_is_not_acknowledged() -> None:
    """The error ends Dramatiq's consumer, which restarts; RabbitMQ delivers it again."""
    consumer = FakeConsumer()
    screened = _screened(
        consumer,
        deliveries(b"[]"),
        "fuzz.requests",
        SCREEN_ACTORS,
        ResultPublisher(FailingAmqp(), dead_letter_queue="fuzz.requests.XQ"),
    )
    with pytest.raises(ConnectionError):
        next(screened)
    assert consumer.channel.acked == []
