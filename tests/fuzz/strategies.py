"""Hypothesis strategies for hostile messages on the requests queue.

Every strategy builds a ``Hostile``: the raw body of one AMQP message, what kind of
hostility it carries, and where its answer must appear. Two families:

- requests that cannot be valid (``hostile_requests``): wrong types, unknown workflows and
  inputs, non-http(s) and over-long URIs, bodies over the size limit, deep nesting, NaN and
  Infinity, lone surrogates, NUL, bidi and zero-width characters, duplicate keys, invalid
  request_id / reply_to / priority / deadline_s / tenant / progress / metadata. Each is
  carried in a well-formed
  Dramatiq message and must be answered REJECTED on its reply queue, or dead-lettered
  when it has no usable ``reply_to``.
- broken Dramatiq messages (``broken_envelopes``): bytes that are not JSON, JSON that is
  not an object, missing or odd keys, an unknown actor, args that are not a list, kwargs
  that are not an object, a queue_name that is not the queue, bogus options. Each must be
  dead-lettered. They carry a request that would be valid on its own, so that a message
  the worker wrongly let through shows up as a Segmind call.

Bodies hold placeholders that the end-to-end test replaces per message (``materialize``):
``ID`` (the request_id and the Dramatiq message_id: a readable id is always the message's
own fuzz id, so every answer can be matched), ``REPLY`` (a private reply queue), ``QUEUE``
(the requests queue), ``DELAY_QUEUE`` (its ``.DQ``) and ``POLLS_QUEUE``. A request is
never generated without a ``reply_to`` key: the default reply queue, ``segmind.results``,
is shared.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from hypothesis import strategies as st

from producers import wire
from producers.catalog import WORKFLOW_ID_PATTERN, load_catalog
from producers.contract import DEFAULT_MAX_REQUEST_BYTES, MAX_DEADLINE_S, MAX_URI_LENGTH
from producers.envelope import ENVELOPE_KEYS

#: Placeholders, each a valid value of its field (so a body's validity does not depend on
#: the values that replace them).
ID: Final = "@fuzz-id@"
REPLY: Final = "@fuzz-reply@"
QUEUE: Final = "@fuzz-queue@"
DELAY_QUEUE: Final = "@fuzz-delay-queue@"
POLLS_QUEUE: Final = "@fuzz-polls-queue@"

CATALOG: Final = load_catalog({})
IMAGE: Final = "https://example.com/cat.png"
#: A request that passes validation as it is (once its placeholders are replaced).
VALID_REQUEST: Final[dict[str, Any]] = {
    "request_id": ID,
    "workflow": "sketch-maker",
    "inputs": {"input_image": IMAGE},
    "reply_to": REPLY,
}


class Route(StrEnum):
    """Where a hostile message's answer must appear."""

    #: A REJECTED result on its reply queue, correlation_id = its fuzz id.
    REPLY = "reply"
    #: The requests queue's ``.XQ``, with a reason.
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Hostile:
    """One hostile message.

    Attributes:
        kind: the class of hostility (``request.bad_uri``, ``envelope.not_json``...).
        body: the AMQP body, with the placeholders ``ID``, ``REPLY`` and ``QUEUE``.
        route: where its answer must appear.
        request: the request it carries (``args[0]``, or the body in the plain form) when
            it is a request case (to check that it cannot be valid), else ``None``.
        reply_property: published in the plain form with the reply queue in the AMQP
            ``reply_to`` property instead of the body.
    """

    kind: str
    body: bytes
    route: Route
    request: Any = None
    reply_property: bool = False


def materialize(body: bytes, *, fuzz_id: str, reply_to: str, queue: str, polls_queue: str) -> bytes:
    """``body`` with its placeholders replaced (each appears as a whole JSON string)."""
    for placeholder, value in (
        (ID, fuzz_id),
        (REPLY, reply_to),
        (QUEUE, queue),
        (DELAY_QUEUE, wire.delay_queue(queue)),
        (POLLS_QUEUE, polls_queue),
    ):
        body = body.replace(json.dumps(placeholder).encode(), json.dumps(value).encode())
    return body


def envelope(request: Any, /, **overrides: Any) -> dict[str, Any]:
    """A well-formed submit message carrying ``request`` (with ``overrides``)."""
    message = {
        "queue_name": QUEUE,
        "actor_name": wire.SUBMIT_ACTOR,
        "args": [request],
        "kwargs": {},
        "options": {},
        "message_id": ID,
        "message_timestamp": 1_763_700_000_000,
    }
    return message | overrides


def encode(value: Any) -> bytes:
    """``value`` as JSON the way a careless producer writes it: NaN and Infinity as bare
    words; UTF-8, or ``\\ud800`` escapes when it holds a lone surrogate (no UTF-8)."""
    try:
        return json.dumps(value, allow_nan=True, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return json.dumps(value, allow_nan=True).encode()


# ------------------------------------------------------------------------------ values

json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
#: Characters no URL, id or queue name holds: bidi overrides and isolates, zero-width
#: ones, a byte order mark, NUL and other controls, line separators, lone surrogates.
INVISIBLE_CHARACTERS: Final = (
    "\u202e\u202d\u2066\u2067\u2068\u2069\u200e\u200f"  # bidi
    "\u200b\u200c\u200d\u2060\ufeff"  # zero-width, BOM
    "\x00\x01\x1b\x7f\x85\u2028\u2029"  # NUL, controls, line separators
    "\ud800\udbff\udc00\udfff"  # lone surrogates
)
#: Those, and visible oddities that are fine in a URL's path (an IRI): a combining mark,
#: the replacement character, an emoji.
ODD_CHARACTERS: Final = INVISIBLE_CHARACTERS + "\u0301\ufffd\U0001f600"
odd_characters = st.sampled_from(ODD_CHARACTERS)
#: Text with at least one odd character in it.
odd_text = st.tuples(st.text(max_size=12), odd_characters, st.text(max_size=12)).map("".join)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def not_an_object() -> st.SearchStrategy[Any]:
    """Any JSON value but an object."""
    return json_scalars | st.lists(json_values, max_size=4)


def wrong_for_optional_number() -> st.SearchStrategy[Any]:
    """Values ``priority`` and ``deadline_s`` never take: strings, booleans, containers."""
    return (
        st.text(max_size=6)
        | st.booleans()
        | st.lists(json_scalars, max_size=2)
        | st.dictionaries(st.text(max_size=4), json_scalars, max_size=2)
    )


def nested(depth: int, leaf: Any = 1) -> Any:
    """``leaf`` inside ``depth`` arrays (or objects, alternately)."""
    value = leaf
    for level in range(depth):
        value = [value] if level % 2 else {"n": value}
    return value


# ------------------------------------------------------------------------------ requests


def with_fields(**fields: Any) -> dict[str, Any]:
    """``VALID_REQUEST`` with ``fields`` replaced (a value of ``...`` removes the field)."""
    request = dict(VALID_REQUEST) | fields
    return {key: value for key, value in request.items() if value is not ...}


def _request_case(kind: str, request: Any, reply: Any = REPLY) -> Hostile:
    """A well-formed message carrying ``request`` (its reply_to set to ``reply`` when it is
    an object): answered on the reply queue exactly when ``reply`` is the placeholder."""
    if isinstance(request, dict):
        request = request | {"reply_to": reply}
    route = Route.REPLY if isinstance(request, dict) and reply == REPLY else Route.DEAD_LETTER
    return Hostile(kind, encode(envelope(request)), route, request)


unusable_reply_to = st.one_of(
    st.none(),
    st.integers(),
    st.booleans(),
    st.lists(st.text(max_size=4), max_size=2),
    st.just(""),
    st.text(min_size=256, max_size=300, alphabet="abc"),  # over the 255 bytes of a name
    st.sampled_from(["amq.gen-x", "amq.direct", "amq.rabbitmq.reply-to", "has space", "a\u202eb"]),
    odd_text,
)
#: Where a request case wants its answer: mostly the private reply queue.
# Drawn in two steps: one_of would flatten unusable_reply_to's own alternatives and
# outweigh the usable one.
reply_choice = st.integers(min_value=0, max_value=3).flatmap(
    lambda n: unusable_reply_to if n == 0 else st.just(REPLY)
)

invalid_request_ids = st.one_of(
    st.integers(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.just(""),
    st.text(min_size=129, max_size=200, alphabet="ab"),
    st.tuples(
        st.text(max_size=5, alphabet="ab"), st.sampled_from(" \t\n"), st.text(max_size=5)
    ).map("".join),
    odd_text.map(lambda text: "id-" + text),
)


@st.composite
def wrong_field_types(draw: st.DrawFn) -> dict[str, Any]:
    """One top-level field of the wrong type or out of its range."""
    field = draw(
        st.sampled_from(
            ["workflow", "inputs", "priority", "deadline_s", "metadata", "tenant", "progress"]
        )
    )
    value: Any
    if field == "workflow":
        value = draw(
            st.integers() | st.booleans() | st.none() | st.lists(json_scalars) | st.just("")
        )
    elif field == "inputs":
        value = draw(not_an_object().filter(lambda v: not isinstance(v, dict)))
    elif field == "priority":
        value = draw(
            wrong_for_optional_number()
            | st.integers().filter(lambda n: not 0 <= n <= 9)
            | st.floats(allow_nan=True, allow_infinity=True)
        )
    elif field == "deadline_s":
        value = draw(
            wrong_for_optional_number()
            | st.floats(max_value=0)
            | st.floats(min_value=MAX_DEADLINE_S, exclude_min=True)
            | st.integers(max_value=0)
            | non_finite
        )
    elif field == "tenant":
        value = draw(
            st.integers()
            | st.booleans()
            | st.lists(json_scalars)
            | st.sampled_from(["", "a" * 65, "acme corp", "acme/eu", "ten\nant", "t\u00e9"])
            | odd_text.filter(lambda text: not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", text))
        )
    elif field == "progress":
        value = draw(st.integers() | st.sampled_from(["true", "yes", 1.0]) | st.lists(json_scalars))
    else:
        value = draw(not_an_object().filter(lambda v: v is not None))
    return with_fields(**{field: value})


def _not_a_workflow(name: str) -> bool:
    return CATALOG.get(name) is None and not re.fullmatch(WORKFLOW_ID_PATTERN[1:-1], name)


unknown_workflows = st.one_of(
    st.text(min_size=1, max_size=40),
    odd_text,
    st.sampled_from([w.name for w in CATALOG]).flatmap(
        lambda name: (
            st.sampled_from(
                [name.upper(), name + " ", " " + name, name + "\n", name.replace("-", "_")]
            )
            | odd_characters.map(lambda ch: name[:3] + ch + name[3:])
        )
    ),
    st.sampled_from(
        [
            "0123456789ABCDEF01234567-v1",  # upper-case hex
            "0123456789abcdef0123456-v1",  # 23 hex digits
            "0123456789abcdef01234567-v",  # no version
            "0123456789abcdef01234567v1",
            "0123456789abcdef01234567-v1\n",  # passes a "$" pattern, not the model's
            "0123456789abcdef01234567-v1234567",
            "../0123456789abcdef01234567-v1",
        ]
    ),
).filter(_not_a_workflow)

_DECLARED = {w.name: {spec.name for spec in w.inputs or ()} for w in CATALOG}


@st.composite
def unknown_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """A catalog workflow with an input it does not declare."""
    workflow = draw(st.sampled_from(sorted(_DECLARED)))
    name = draw(
        (
            st.text(max_size=30) | odd_text | st.sampled_from(["image", "prompt", "Input_Image"])
        ).filter(lambda n: n not in _DECLARED[workflow])
    )
    return with_fields(workflow=workflow, inputs={name: draw(json_values)})


def _inputs_of(kind: str) -> list[tuple[str, str]]:
    return [(w.name, spec.name) for w in CATALOG for spec in w.inputs or () if spec.type == kind]


@st.composite
def wrong_input_types(draw: st.DrawFn) -> dict[str, Any]:
    """A declared input given a value of the wrong type."""
    kind = draw(st.sampled_from(["integer", "string", "uri"]))
    workflow, name = draw(st.sampled_from(_inputs_of(kind)))
    if kind == "integer":
        value = draw(
            st.floats(allow_nan=False).filter(lambda f: not f.is_integer())
            | st.booleans()
            | st.none()
            | st.lists(st.integers(), max_size=2)
            | st.text(max_size=8).filter(lambda t: not re.fullmatch(r"-?[0-9]{1,19}", t.strip()))
            | st.integers(min_value=2**63)
            | st.integers(max_value=-(2**63) - 1)
            | nested_strategy()
        )
    else:
        value = draw(
            st.integers()
            | st.booleans()
            | st.none()
            | st.floats(allow_nan=False)
            | st.lists(json_scalars, max_size=3)
            | st.dictionaries(st.text(max_size=4), json_scalars, max_size=2)
            | nested_strategy()
        )
    return with_fields(workflow=workflow, inputs={name: value})


def nested_strategy() -> st.SearchStrategy[Any]:
    """A value nested 2-60 levels deep."""
    return st.integers(min_value=2, max_value=60).map(nested)


bad_uris = st.one_of(
    st.sampled_from(["file:", "javascript:", "data:", "gopher:", "ftp:", "mailto:", "ws:"]).flatmap(
        lambda scheme: st.sampled_from(
            [
                scheme + "//example.com/cat.png",
                scheme + "///etc/passwd",
                scheme + "alert(1)",
                scheme + "text/html;base64,PHNjcmlwdD4=",
            ]
        )
    ),
    st.sampled_from(
        [
            "",
            "cat.png",
            "/tmp/cat.png",
            "//example.com/cat.png",
            "http://",
            "https:///cat.png",
            "http://:80/cat.png",
            "http://example.com:99999/cat.png",
            "http://[::1/cat.png",
            "HTTP//example.com",
        ]
    ),
    # Whitespace, controls and invisible characters anywhere in an otherwise fine URL.
    st.tuples(
        st.integers(min_value=0, max_value=len(IMAGE)),
        st.sampled_from(INVISIBLE_CHARACTERS + " \t\n\r\xa0\u3000"),
    ).map(lambda cut: IMAGE[: cut[0]] + cut[1] + IMAGE[cut[0] :]),
    # Over-long: beyond MAX_URI_LENGTH.
    st.integers(min_value=MAX_URI_LENGTH + 1, max_value=MAX_URI_LENGTH + 5000).map(
        lambda n: "https://example.com/" + "a" * (n - 20)
    ),
)


@st.composite
def bad_uri_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """A uri input given a URL that is not an http(s) URL with a host."""
    workflow, name = draw(st.sampled_from(_inputs_of("uri")))
    return with_fields(workflow=workflow, inputs={name: draw(bad_uris)})


@st.composite
def unknown_fields(draw: st.DrawFn) -> dict[str, Any]:
    """A field the request does not have."""
    name = draw(
        st.sampled_from(["input", "callback_url", "workflow_id", "api_key", "Workflow"])
        | st.text(min_size=1, max_size=12)
    ).strip()
    known = {
        "request_id",
        "workflow",
        "inputs",
        "reply_to",
        "priority",
        "deadline_s",
        "start_by_s",
        "progress",
        "tenant",
        "metadata",
    }
    if not name or name in known:
        name = "extra"
    return with_fields(**{name: draw(json_values)})


@st.composite
def oversized(draw: st.DrawFn) -> dict[str, Any]:
    """A request whose only fault is its size: over ``DEFAULT_MAX_REQUEST_BYTES`` as JSON."""
    size = draw(st.integers(min_value=1, max_value=64 * 1024)) + DEFAULT_MAX_REQUEST_BYTES
    where = draw(st.sampled_from(["metadata", "inputs"]))
    filler = draw(st.sampled_from(["x", "x", "é", "\U0001f600"]))  # 1, 2, 4 bytes in UTF-8
    padding = filler * (size // len(filler.encode()))
    if where == "metadata":
        return with_fields(metadata={"padding": padding})
    # A raw workflow id takes any inputs: only the size is wrong.
    return with_fields(workflow="0123456789abcdef01234567-v1", inputs={"prompt": padding})


@st.composite
def deeply_nested(draw: st.DrawFn) -> dict[str, Any]:
    """Metadata nested deeper than a request may be (pydantic stops at 255 levels), or a
    string input given a deep structure."""
    depth = draw(st.integers(min_value=260, max_value=800))
    if draw(st.booleans()):
        return with_fields(metadata={"deep": nested(depth)})
    return with_fields(
        workflow="stock-video", inputs={"text_prompt": nested(depth, draw(json_scalars))}
    )


@st.composite
def not_json_data(draw: st.DrawFn) -> dict[str, Any]:
    """NaN, Infinity or a lone surrogate somewhere JSON data is otherwise free: metadata, a
    raw workflow's inputs, or an input name."""
    bad = draw(non_finite | st.sampled_from(["\ud800", "a\udfffb", "\udbff\udc00\ud800"]))
    where = draw(st.sampled_from(["metadata", "inputs", "key"]))
    if where == "metadata":
        return with_fields(metadata={"value": bad})
    if where == "inputs":
        return with_fields(workflow="0123456789abcdef01234567-v2", inputs={"x": bad})
    key = bad if isinstance(bad, str) else "\ud800"
    return with_fields(workflow="0123456789abcdef01234567-v2", inputs={key: 1})


@st.composite
def invalid_ids(draw: st.DrawFn) -> dict[str, Any]:
    """An invalid request_id (the answer is then matched by the message's id)."""
    return with_fields(request_id=draw(invalid_request_ids))


@st.composite
def missing_workflow(draw: st.DrawFn) -> dict[str, Any]:
    """No workflow at all (other fields as given)."""
    return with_fields(workflow=..., metadata=draw(st.none() | st.just({"a": 1})))


_REQUEST_KINDS: Final = {
    "request.wrong_type": wrong_field_types(),
    "request.unknown_workflow": unknown_workflows.map(lambda name: with_fields(workflow=name)),
    "request.unknown_input": unknown_inputs(),
    "request.wrong_input_type": wrong_input_types(),
    "request.bad_uri": bad_uri_inputs(),
    "request.unknown_field": unknown_fields(),
    "request.oversized": oversized(),
    "request.deep_nesting": deeply_nested(),
    "request.not_json_data": not_json_data(),
    "request.invalid_request_id": invalid_ids(),
    "request.missing_workflow": missing_workflow(),
}


@st.composite
def _duplicate_keys(draw: st.DrawFn) -> Hostile:
    """A request object written with a key twice: JSON parsers keep the last one, which
    is invalid here (the first may be valid, to catch a parser that keeps the first)."""
    field, bad = draw(
        st.sampled_from(
            [
                ("workflow", 123),
                ("workflow", "no-such-workflow"),
                ("inputs", {"input_image": "file:///etc/passwd"}),
                ("inputs", ["not", "an", "object"]),
                ("priority", "high"),
                ("deadline_s", -1),
            ]
        )
    )
    reply = draw(reply_choice)
    members = [
        f"{json.dumps(key)}:{encode(value).decode()}"
        for key, value in VALID_REQUEST.items()
        if key != "reply_to"
    ]
    members += [
        f'"reply_to":{encode(reply).decode()}',
        f"{json.dumps(field)}:{encode(bad).decode()}",
    ]
    request_text = "{" + ",".join(members) + "}"
    message = envelope("@request@")
    body = encode(message).replace(b'"@request@"', request_text.encode())
    parsed = json.loads(request_text)
    route = Route.REPLY if reply == REPLY else Route.DEAD_LETTER
    return Hostile("request.duplicate_keys", body, route, parsed)


def _request_kind(kind: str) -> st.SearchStrategy[Hostile]:
    return st.tuples(_REQUEST_KINDS[kind], reply_choice).map(
        lambda drawn: _request_case(kind, drawn[0], drawn[1])
    )


#: Every kind of hostile request, each in a well-formed message.
REQUEST_KINDS: Final[dict[str, st.SearchStrategy[Hostile]]] = {
    **{kind: _request_kind(kind) for kind in _REQUEST_KINDS},
    "request.duplicate_keys": _duplicate_keys(),
    # Not a request object at all: nowhere to answer.
    "request.not_an_object": not_an_object().map(
        lambda value: _request_case("request.not_an_object", value)
    ),
}


def _plain(case: Hostile, reply_property: bool) -> Hostile:
    """``case``'s request published bare (the plain form), its reply queue in the AMQP
    ``reply_to`` property instead of the body when ``reply_property``. A body holding a key
    of a Dramatiq message is taken for one, and is refused as a broken one."""
    request: dict[str, Any] = case.request
    kind = case.kind.replace("request.", "plain.", 1)
    if not frozenset(ENVELOPE_KEYS).isdisjoint(request):
        return Hostile(kind, encode(request), Route.DEAD_LETTER, request)
    if request.get("reply_to") == REPLY and reply_property:
        bare = {key: value for key, value in request.items() if key != "reply_to"}
        return Hostile(kind, encode(bare), Route.REPLY, bare, reply_property=True)
    return Hostile(kind, encode(request), case.route, request)


#: Every request kind in the plain form: the bare request as the body.
PLAIN_KINDS: Final[dict[str, st.SearchStrategy[Hostile]]] = {
    kind.replace("request.", "plain.", 1): strategy.filter(
        lambda case: isinstance(case.request, dict)
    ).flatmap(lambda case: st.booleans().map(lambda in_property: _plain(case, in_property)))
    for kind, strategy in REQUEST_KINDS.items()
    if kind not in ("request.not_an_object", "request.duplicate_keys")
}


def _one_kind(kinds: dict[str, st.SearchStrategy[Hostile]]) -> st.SearchStrategy[Hostile]:
    """A kind drawn first, then a case of it: every kind about as often (``one_of`` would
    flatten the kinds' own alternatives and favour the kinds that have many)."""
    return st.sampled_from(sorted(kinds)).flatmap(lambda kind: kinds[kind])


def hostile_requests() -> st.SearchStrategy[Hostile]:
    """Requests that cannot be valid, in well-formed messages (see the module docstring)."""
    return _one_kind(REQUEST_KINDS)


# ------------------------------------------------------------------------------ envelopes


def _dead(kind: str, value: Any) -> Hostile:
    body = value if isinstance(value, bytes) else encode(value)
    return Hostile(kind, body, Route.DEAD_LETTER)


def _valid_body() -> bytes:
    return encode(envelope(VALID_REQUEST))


not_json_bodies = st.one_of(
    st.binary(max_size=64),
    st.just(b""),
    st.integers(min_value=1, max_value=200).map(lambda cut: _valid_body()[:cut]),  # truncated
    st.sampled_from([b"\xff\xfe{}", b'{"queue_name": "\xff"}', b"{'single': 'quotes'}", b"NaN"]),
    st.integers(min_value=2000, max_value=20000).map(lambda depth: b"[" * depth + b"]" * depth),
).filter(lambda body: not _is_json_object(body))


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, RecursionError):
        return False


@st.composite
def _missing_key(draw: st.DrawFn) -> Hostile:
    message = envelope(VALID_REQUEST)
    del message[draw(st.sampled_from(["queue_name", "actor_name", "args", "kwargs", "options"]))]
    return _dead("envelope.missing_key", message)


@st.composite
def _extra_key(draw: st.DrawFn) -> Hostile:
    key = draw(st.sampled_from(["priority", "eta", "request", "queue"]) | st.text(max_size=10))
    if key in envelope(None):
        key = "extra"
    return _dead("envelope.extra_key", envelope(VALID_REQUEST, **{key: draw(json_values)}))


odd_actor_names = st.one_of(
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.just(wire.SUBMIT_ACTOR), max_size=2),
    st.just(""),
    st.sampled_from(
        [
            wire.POLL_ACTOR,  # an actor, of another queue
            "Submit_Workflow",
            "submit_workflow ",
            "submit_workflow\x00",
            "submit\u200bworkflow",
            "\u202esubmit_workflow",
            "dramatiq",
        ]
    ),
    st.text(max_size=30).filter(lambda name: name != wire.SUBMIT_ACTOR),
)
wrong_queue_names = st.one_of(
    st.sampled_from(
        [
            wire.DEFAULT_REQUESTS_QUEUE,
            wire.DEFAULT_POLLS_QUEUE,
            DELAY_QUEUE,  # Dramatiq would ack it on the delay queue's channel
            POLLS_QUEUE,
            "@fuzz-queue@.XQ",  # left as it is: not a whole placeholder
            "",
        ]
    ),
    st.integers(),
    st.none(),
    st.lists(st.text(max_size=3), max_size=2),
    st.dictionaries(st.text(max_size=3), st.text(max_size=3), min_size=1, max_size=2),
    st.text(max_size=30).filter(lambda name: name != QUEUE),
)

#: Options a message must not carry, with values a producer could send.
forbidden_options = st.one_of(
    st.just({"pipe_target": envelope(VALID_REQUEST)}),
    st.just({"on_success": wire.SUBMIT_ACTOR}),
    st.just({"on_failure": wire.POLL_ACTOR}),
    st.just({"on_retry_exhausted": "no_such_actor"}),
    st.just({"throws": "Exception"}),
    st.just({"retry_when": "always"}),
    st.just({"time_limit": 1}),
    st.just({"max_age": 1}),
    st.just({"max_retries": "many"}),
    st.just({"min_backoff": -5}),
    st.just({"pipe_ignore": True}),
    st.just({"group_completion_uuid": "x", "group_completion_callbacks": [{}]}),
)
bogus_typed_options = st.one_of(
    st.just({"eta": 1}),  # an eta on a queue that is not a delay queue
    (st.text(max_size=5) | st.lists(st.integers(), max_size=2) | st.booleans() | non_finite).map(
        lambda eta: {"eta": eta}
    ),
    (st.integers().filter(lambda n: not 0 <= n <= 9) | st.text(max_size=3) | st.booleans()).map(
        lambda priority: {"broker_priority": priority}
    ),
    (st.integers(max_value=-1) | st.text(max_size=3) | st.booleans() | st.floats()).map(
        lambda retries: {"retries": retries}
    ),
    (st.integers() | st.lists(st.text(max_size=3), max_size=2)).map(lambda tb: {"traceback": tb}),
    (st.text(max_size=5) | non_finite).map(lambda ts: {"requeue_timestamp": ts}),
)
bad_message_ids = st.one_of(
    st.integers(),
    st.none(),
    st.booleans(),
    st.lists(st.text(max_size=3), max_size=2),
    st.just(""),
    st.text(min_size=129, max_size=300, alphabet="0123456789abcdef"),
    odd_text,
    st.just("id with spaces"),
)
bad_timestamps = st.one_of(
    st.text(max_size=8),
    st.booleans(),
    st.none(),
    st.integers(max_value=-1),
    st.integers(min_value=253_402_300_800_000),
    non_finite,
    st.lists(st.integers(), max_size=2),
)


#: Every kind of message that is not a well-formed Dramatiq message for the requests queue.
ENVELOPE_KINDS: Final[dict[str, st.SearchStrategy[Hostile]]] = {
    "envelope.not_json": not_json_bodies.map(lambda body: _dead("envelope.not_json", body)),
    "envelope.not_an_object": not_an_object().map(
        lambda value: _dead("envelope.not_an_object", value)
    ),
    "envelope.missing_key": _missing_key(),
    "envelope.extra_key": _extra_key(),
    "envelope.actor_name": odd_actor_names.map(
        lambda name: _dead("envelope.actor_name", envelope(VALID_REQUEST, actor_name=name))
    ),
    "envelope.queue_name": wrong_queue_names.map(
        lambda name: _dead("envelope.queue_name", envelope(VALID_REQUEST, queue_name=name))
    ),
    "envelope.args": (
        not_an_object().filter(lambda v: not isinstance(v, list)) | st.just(VALID_REQUEST)
    ).map(lambda args: _dead("envelope.args", envelope(VALID_REQUEST, args=args))),
    "envelope.kwargs": not_an_object().map(
        lambda kwargs: _dead("envelope.kwargs", envelope(VALID_REQUEST, kwargs=kwargs))
    ),
    "envelope.options": st.one_of(
        not_an_object(), forbidden_options, bogus_typed_options, bogus_typed_options
    ).map(lambda options: _dead("envelope.options", envelope(VALID_REQUEST, options=options))),
    "envelope.message_id": bad_message_ids.map(
        lambda mid: _dead("envelope.message_id", envelope(VALID_REQUEST, message_id=mid))
    ),
    "envelope.message_timestamp": bad_timestamps.map(
        lambda ts: _dead(
            "envelope.message_timestamp", envelope(VALID_REQUEST, message_timestamp=ts)
        )
    ),
}


def broken_envelopes() -> st.SearchStrategy[Hostile]:
    """Messages that are not well-formed Dramatiq messages for the requests queue (see the
    module docstring)."""
    return _one_kind(ENVELOPE_KINDS)


@st.composite
def _odd_arguments(draw: st.DrawFn) -> Hostile:
    """Well-formed messages whose arguments are not ``(request)``: the worker rejects
    them, answering on the request's reply queue when the first argument names one."""
    request = dict(VALID_REQUEST) | {"reply_to": draw(reply_choice)}
    args, kwargs = draw(
        st.sampled_from(
            [
                ([], {}),
                ([request, request], {}),
                ([request, 1], {}),
                ([request], {"request": request}),
                ([], {"request": request}),
            ]
        )
    )
    answered = bool(args) and request["reply_to"] == REPLY
    route = Route.REPLY if answered else Route.DEAD_LETTER
    body = encode(envelope(None, args=args, kwargs=kwargs))
    return Hostile("envelope.arguments", body, route)


@st.composite
def _no_message_id(draw: st.DrawFn) -> Hostile:
    """No ``message_id`` (Dramatiq makes one up): answered by the request's own id."""
    message = envelope(draw(_REQUEST_KINDS["request.unknown_workflow"]) | {"reply_to": REPLY})
    del message["message_id"]
    return Hostile("envelope.no_message_id", encode(message), Route.REPLY, message["args"][0])


#: Every kind of hostile message.
ALL_KINDS: Final[dict[str, st.SearchStrategy[Hostile]]] = {
    **REQUEST_KINDS,
    **PLAIN_KINDS,
    **ENVELOPE_KINDS,
    "envelope.arguments": _odd_arguments(),
    "envelope.no_message_id": _no_message_id(),
}


def hostile_messages() -> st.SearchStrategy[Hostile]:
    """Every kind of hostile message, each kind about as often."""
    return _one_kind(ALL_KINDS)
