"""Copying a COMPLETED job's output files to the output store, before its result is
published: each file output is downloaded (``worker.outputs.fetch``) and streamed into the
store (``worker.outputs.store``) under its stable key; text outputs stay as they are.

``OutputKeeper.keep`` returns the outputs as the result will carry them, and the copies
that failed for a reason that may pass (a timeout, a 5xx, the store unreachable): the
pipeline then tries the job's copies again later, as a delayed message, up to
``OUTPUT_STORE_RETRIES`` times. What can never work (a host not allowed, a 404, a file too
large), or what still fails after the last retry, ends that output ``stored: false`` with
the reason, and the job stays COMPLETED: storage never turns a paid job into a failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from producers.contract import Output
from worker.outputs.fetch import FetchError, OutputFetcher
from worker.outputs.policy import extension, storage_key
from worker.outputs.store import OutputStore, StoreUnavailable


@dataclass(frozen=True)
class CopyFailure:
    """An output that could not be copied this time.

    Attributes:
        keyname: the output.
        reason: why.
        kind: the class of failure (a metric label: a fetch error's kind, or
            ``store_unavailable``).
        transient: whether a later attempt may work.
    """

    keyname: str
    reason: str
    kind: str
    transient: bool


@dataclass
class Kept:
    """What one attempt at copying a job's outputs did.

    Attributes:
        outputs: the outputs as the result carries them when no retry follows.
        copied: the copies made: (bytes, seconds) each.
        failures: the copies that failed.
    """

    outputs: list[Output]
    copied: list[tuple[int, float]] = field(default_factory=list)
    failures: list[CopyFailure] = field(default_factory=list)

    @property
    def retry(self) -> bool:
        """Whether a failure may pass: the job's copies should be tried again."""
        return any(failure.transient for failure in self.failures)


def is_file(output: Output) -> bool:
    """Whether an output is a file at a URL (copied), rather than text (kept as it is)."""
    data = output.data
    return (
        output.type not in ("text", "json")
        and isinstance(data, str)
        and data.startswith(("https://", "http://"))
    )


@dataclass
class OutputKeeper:
    """Copies outputs from their hosts to the store.

    Args:
        fetcher: downloads under the fetch policy.
        store: where copies go.
        clock: a monotonic clock, for the copies' durations.
    """

    fetcher: OutputFetcher
    store: OutputStore
    clock: Callable[[], float] = time.monotonic

    def keep(self, request_id: str, outputs: list[Output], *, last_attempt: bool) -> Kept:
        """Copy each file output of ``request_id``.

        Args:
            request_id: the job's request id (the copies' key).
            outputs: the outputs Segmind returned.
            last_attempt: no retry follows: a transient failure ends the output
                ``stored: false`` too.

        Returns:
            The outputs with their copies' locations, and what failed. Never raises for a
            download or the store; the caller retries when ``Kept.retry``.
        """
        kept = Kept(outputs=[])
        for output in outputs:
            if not is_file(output):
                kept.outputs.append(output)
                continue
            url = str(output.data)
            started = self.clock()
            try:
                copied = self._copy(request_id, output, url)
            except (FetchError, StoreUnavailable) as error:
                failure = _failure(output.keyname, error)
                kept.failures.append(failure)
                reason = failure.reason
                if failure.transient and last_attempt:
                    reason = f"{reason} (still failing after the last retry)"
                kept.outputs.append(
                    output.model_copy(update={"stored": False, "store_error": reason})
                )
                continue
            kept.copied.append((copied.bytes or 0, self.clock() - started))
            kept.outputs.append(copied)
        return kept

    def _copy(self, request_id: str, output: Output, url: str) -> Output:
        with self.fetcher.open(url) as download:
            ext = extension(download.content_type, download.url)
            key = storage_key(self.store.prefix, request_id, output.keyname, ext)
            media = download.content_type.split(";", 1)[0].strip() or "application/octet-stream"
            copy = self.store.put(key, download.chunks, media)
        return output.model_copy(
            update={
                "data": copy.location,
                "source_url": url,
                "sha256": copy.sha256,
                "bytes": copy.size,
                "content_type": media,
                "stored": True,
            }
        )


def _failure(keyname: str, error: FetchError | StoreUnavailable) -> CopyFailure:
    if isinstance(error, FetchError):
        return CopyFailure(keyname, error.reason, error.kind, error.transient)
    return CopyFailure(keyname, f"the output store failed: {error}", "store_unavailable", True)
