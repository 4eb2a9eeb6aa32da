"""segmind-queue for producers: the request/result contract and the workflow catalog."""

from producers.catalog import Catalog, UnknownWorkflowError, Workflow, default_catalog, load_catalog
from producers.contract import (
    AcceptedRequest,
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

__all__ = [
    "AcceptedRequest",
    "Catalog",
    "ErrorCode",
    "ErrorInfo",
    "Output",
    "Request",
    "RequestRejected",
    "Result",
    "Status",
    "Timings",
    "UnknownWorkflowError",
    "Workflow",
    "default_catalog",
    "load_catalog",
    "validate_request",
]
