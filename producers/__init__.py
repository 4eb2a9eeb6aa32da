"""segmind-queue for producers: the contract SDK every backend, the worker and the console use.

What a backend imports::

    from producers import Publisher, ResultConsumer

    with ResultConsumer.private() as replies, Publisher() as publisher:
        request_id = publisher.publish(
            {"workflow": "stock-video", "inputs": {...}, "reply_to": replies.queue}
        )
        result = replies.wait([request_id], timeout_s=3600)[request_id]

Beside these: the request/result models and their validation (``producers.contract``), the
workflow catalog (``producers.catalog``), the wire format and the envelope screen
(``producers.wire``, ``producers.envelope``), the JSON Schemas (``producers.schemas``) and
the AMQP helpers (``producers.amqp``).
"""

from producers.amqp import BrokerError, PublishError
from producers.catalog import Catalog, UnknownWorkflowError, Workflow, default_catalog, load_catalog
from producers.consumer import ConsumeError, ResultConsumer, ResultTimeout
from producers.contract import (
    DEFAULT_REPLY_TO,
    AcceptedRequest,
    Cancel,
    ErrorCode,
    ErrorInfo,
    Output,
    Request,
    RequestRejected,
    Result,
    Status,
    Timings,
    validate_request,
)
from producers.publisher import Publisher
from producers.wire import DEFAULT_AMQP_URL

__all__ = [
    "DEFAULT_AMQP_URL",
    "DEFAULT_REPLY_TO",
    "AcceptedRequest",
    "BrokerError",
    "Cancel",
    "Catalog",
    "ConsumeError",
    "ErrorCode",
    "ErrorInfo",
    "Output",
    "PublishError",
    "Publisher",
    "Request",
    "RequestRejected",
    "Result",
    "ResultConsumer",
    "ResultTimeout",
    "Status",
    "Timings",
    "UnknownWorkflowError",
    "Workflow",
    "default_catalog",
    "load_catalog",
    "validate_request",
]
