"""Where output files are copied: a directory (``file:///path``) or an S3-compatible bucket
(``s3://bucket/prefix``), behind one small interface.

``put`` streams the chunks it is given into the store under a key and returns the copy's
location, SHA-256 and size; it never holds a whole file in memory. A copy under an existing
key replaces it: the same output is always stored under the same key with the same bytes,
so a copy repeated after a crash changes nothing. ``chunks`` of a location read a copy
back (``segmind-queue outputs --download``).

S3 goes through boto3: endpoint, region and credentials come from the standard AWS
settings (``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3`` for MinIO, Ceph or R2, the
credential chain: environment, shared files, instance roles), so it works wherever the
AWS CLI does.

Failure modes: ``StoreUnavailable`` for a store that could not be written or read (full,
unreachable, access refused); the caller retries the copy later.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import unquote, urlsplit

#: The chunk size a copy is read back in.
READ_CHUNK: Final = 1024 * 1024


class StoreUnavailable(Exception):
    """The store could not be written or read."""


@dataclass(frozen=True, slots=True)
class StoredCopy:
    """A copy in the store.

    Attributes:
        location: where it is (``file:///...`` or ``s3://bucket/key``).
        sha256: its SHA-256, hex.
        size: its size in bytes.
    """

    location: str
    sha256: str
    size: int


class OutputStore(Protocol):
    """Where output files are copied."""

    @property
    def prefix(self) -> str:
        """The key prefix copies go under (may be empty)."""

    def put(self, key: str, chunks: Iterable[bytes], content_type: str) -> StoredCopy:
        """Stream ``chunks`` into the store under ``key`` (replacing a copy there).

        Raises:
            StoreUnavailable: the store could not be written.
            Exception: whatever iterating ``chunks`` raises (the copy is abandoned).
        """

    def chunks(self, location: str) -> Iterator[bytes]:
        """A copy's bytes, read back in chunks.

        Raises:
            StoreUnavailable: it could not be read.
            ValueError: ``location`` is not a location of this store.
        """


class _Hashing:
    """Counts and hashes the chunks that pass through it."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self.digest = hashlib.sha256()
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks:
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk


class _ChunkReader:
    """A read-only file object over an iterator of chunks (what boto3 uploads from)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        taken = len(self._buffer) if size < 0 else min(size, len(self._buffer))
        out = bytes(self._buffer[:taken])
        del self._buffer[:taken]
        return out

    def readable(self) -> bool:
        return True


class FileStore:
    """Copies in a directory: ``<root>/<key>``, written to a temporary file beside it and
    renamed into place, so a copy is whole or absent.

    Args:
        root: the directory (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.prefix = ""

    def put(self, key: str, chunks: Iterable[bytes], content_type: str) -> StoredCopy:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"key {key!r} leads outside the store")
        hashing = _Hashing(chunks)
        with _unavailable_on_os_error():
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with _unavailable_on_os_error():
                out = os.fdopen(handle, "wb")
            with out:
                # What the source raises (a broken download) goes through as it is.
                for chunk in hashing:
                    with _unavailable_on_os_error():
                        out.write(chunk)
            with _unavailable_on_os_error():
                os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return StoredCopy(path.as_uri(), hashing.digest.hexdigest(), hashing.size)

    def chunks(self, location: str) -> Iterator[bytes]:
        parts = urlsplit(location)
        if parts.scheme != "file":
            raise ValueError(f"{location!r} is not a file:// location")
        path = Path(unquote(parts.path)).resolve()
        if self.root not in path.parents:
            raise ValueError(f"{location!r} is not in this store")
        with _unavailable_on_os_error(), path.open("rb") as source:
            while chunk := source.read(READ_CHUNK):
                yield chunk


class S3Store:
    """Copies in an S3-compatible bucket: ``s3://<bucket>/<prefix>/<key>``, uploaded in
    parts as the chunks arrive (boto3's managed transfer: a few parts in memory at most).

    Args:
        bucket: the bucket.
        prefix: the key prefix (may be empty).
        client: a boto3 S3 client (default: one from the standard AWS settings).
    """

    def __init__(self, bucket: str, prefix: str = "", client: Any = None) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else boto3.client("s3")
        # Parts of 8 MiB, two at a time: memory stays bounded whatever the file's size.
        self._transfer = TransferConfig(
            multipart_threshold=8 * 1024 * 1024,
            multipart_chunksize=8 * 1024 * 1024,
            max_concurrency=2,
        )

    def put(self, key: str, chunks: Iterable[bytes], content_type: str) -> StoredCopy:
        from botocore.exceptions import BotoCoreError, ClientError

        hashing = _Hashing(chunks)
        try:
            self.client.upload_fileobj(
                _ChunkReader(hashing),
                self.bucket,
                key,
                ExtraArgs={"ContentType": content_type},
                Config=self._transfer,
            )
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(_describe(exc)) from None
        return StoredCopy(f"s3://{self.bucket}/{key}", hashing.digest.hexdigest(), hashing.size)

    def chunks(self, location: str) -> Iterator[bytes]:
        from botocore.exceptions import BotoCoreError, ClientError

        parts = urlsplit(location)
        if parts.scheme != "s3" or parts.netloc != self.bucket:
            raise ValueError(f"{location!r} is not in s3://{self.bucket}")
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=parts.path.lstrip("/"))["Body"]
            while chunk := body.read(READ_CHUNK):
                yield chunk
        except (BotoCoreError, ClientError) as exc:
            raise StoreUnavailable(_describe(exc)) from None


@contextmanager
def _unavailable_on_os_error() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StoreUnavailable(f"{type(exc).__name__}: {exc.strerror or exc}") from None


def _describe(exc: Exception) -> str:
    # botocore's messages name the operation and the error code, never the credentials.
    return f"{type(exc).__name__}: {exc}"


def open_output_store(url: str) -> OutputStore:
    """The store ``OUTPUT_STORE`` names.

    Raises:
        ValueError: not ``file:///absolute/path`` nor ``s3://bucket[/prefix]``.
    """
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ValueError("OUTPUT_STORE: expected file:///absolute/path")
        return FileStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc or parts.query or parts.username:
            raise ValueError("OUTPUT_STORE: expected s3://bucket[/prefix]")
        return S3Store(parts.netloc, parts.path)
    raise ValueError("OUTPUT_STORE: expected file:///path or s3://bucket[/prefix]")
