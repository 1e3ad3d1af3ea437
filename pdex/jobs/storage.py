"""Where job outputs go: S3 (boto3) or a folder on this machine, chosen by EXPORT_STORAGE_URL.

Keys are deterministic (`{partner}/{job}/…`), so a chunk that runs twice overwrites its own object rather
than adding a second one. Writers commit atomically: a reader never sees half a file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import urlparse

from django.conf import settings

READ_BLOCK = 1024 * 1024
# S3 multipart: every part but the last is at least 5 MiB; smaller segments are gathered into parts this big.
S3_MIN_PART = 5 * 1024 * 1024
S3_PART = 16 * 1024 * 1024


class Storage(Protocol):
    def writer(self, key: str) -> contextmanager: ...
    def join(self, keys: list[str], key: str) -> int: ...
    def read(self, key: str) -> Iterator[bytes]: ...
    def open_local(self, key: str) -> BinaryIO | None: ...
    def size(self, key: str) -> int: ...
    def exists(self, key: str) -> bool: ...
    def delete_prefix(self, prefix: str) -> None: ...
    def presigned_url(self, key: str, expires_in: int) -> str | None: ...
    def check(self) -> None: ...


class FileStorage:
    """A folder; files are served by our web process at HMAC-signed URLs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not str(path).startswith(str(self.root.resolve()) + os.sep):
            raise ValueError(f"storage key escapes the root: {key!r}")
        return path

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as handle:
                yield handle
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def join(self, keys: list[str], key: str) -> int:
        """Publish `key` as the concatenation of `keys`, atomically (built aside, then renamed); returns its size.

        No byte is copied: one segment becomes the file itself (a hard link), several become a folder of hard
        links to them, in order, which `read` and `size` treat as one file. Copying them into one file (at
        ~150 MB/s through the page cache here, beside PostgreSQL's writes) was 8–9 s of a 1.96 GB export's
        finish. The links keep the data when the segments folder is removed; a filesystem without hard links
        gets copies."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        sources = [self._path(source) for source in keys]
        if len(sources) == 1:
            built = path.parent / f".join-{uuid.uuid4().hex}"
            _link(sources[0], built)
        else:
            built = Path(tempfile.mkdtemp(dir=path.parent, prefix=".join-"))
            try:
                for index, source in enumerate(sources):
                    _link(source, built / f"{index:05d}")
            except BaseException:
                shutil.rmtree(built, ignore_errors=True)
                raise
        _replace(built, path)
        return self.size(key)

    def _parts(self, key: str) -> list[Path]:
        """The files that make up `key`: itself, or the segments a join linked into its folder."""
        path = self._path(key)
        return sorted(path.iterdir()) if path.is_dir() else [path]

    def open_local(self, key: str) -> BinaryIO | None:
        """The file itself, open for reading: the web server can hand it to the kernel (sendfile). None for a
        file joined from several segments (it is read part after part)."""
        path = self._path(key)
        return None if path.is_dir() else open(path, "rb")  # the response closes it

    def read(self, key: str) -> Iterator[bytes]:
        for part in self._parts(key):
            with open(part, "rb") as handle:
                while block := handle.read(READ_BLOCK):
                    yield block

    def size(self, key: str) -> int:
        return sum(part.stat().st_size for part in self._parts(key))

    def exists(self, key: str) -> bool:
        return self._path(key).exists()

    def delete_prefix(self, prefix: str) -> None:
        path = self._path(prefix.rstrip("/"))
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        return None

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not os.access(self.root, os.W_OK):
            raise OSError(f"export folder is not writable: {self.root}")


class S3Storage:
    """An S3 bucket (or MinIO through AWS_ENDPOINT_URL); server-side encryption; multipart for big files."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None):
        import boto3  # noqa: PLC0415 - boto3 takes ~0.4 s to import: only S3 deployments pay
        from boto3.s3.transfer import TransferConfig  # noqa: PLC0415 - boto3 takes ~0.4 s to import: only S3 deployments pay
        from botocore.config import Config  # noqa: PLC0415 - boto3 takes ~0.4 s to import: only S3 deployments pay

        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # SigV4 presigned URLs (SigV2 is refused by newer regions); standard retries ride out S3 throttling.
        config = Config(signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5})
        self.client = boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self.transfer = TransferConfig(multipart_threshold=16 * 1024 * 1024, multipart_chunksize=16 * 1024 * 1024)

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        # Spooled: small files stay in memory, big ones go to disk, so memory stays flat.
        with tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024) as spool:
            yield spool
            spool.seek(0)
            self.client.upload_fileobj(spool, self.bucket, self._key(key), Config=self.transfer,
                                       ExtraArgs={"ServerSideEncryption": "AES256",
                                                  "ContentType": "application/fhir+ndjson"})

    def join(self, keys: list[str], key: str) -> int:
        """Publish `key` as the concatenation of `keys` with one multipart upload (atomic: the object appears
        when it completes); returns its size.

        A segment of at least 5 MiB met at a part boundary is copied inside S3 (UploadPartCopy); smaller ones
        are read and gathered into parts of S3_PART bytes, because every part but the last must be ≥ 5 MiB.
        Memory is at most one part.
        """
        target = self._key(key)
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=target, ServerSideEncryption="AES256",
                                                     ContentType="application/fhir+ndjson")["UploadId"]
        parts: list[dict] = []
        pending = bytearray()
        total = 0

        def send(data: bytes | bytearray) -> None:
            number = len(parts) + 1
            answer = self.client.upload_part(Bucket=self.bucket, Key=target, UploadId=upload, PartNumber=number,
                                             Body=bytes(data))
            parts.append({"ETag": answer["ETag"], "PartNumber": number})

        try:
            for source in keys:
                size = self.size(source)
                total += size
                if not pending and size >= S3_MIN_PART:
                    number = len(parts) + 1
                    answer = self.client.upload_part_copy(
                        Bucket=self.bucket, Key=target, UploadId=upload, PartNumber=number,
                        CopySource={"Bucket": self.bucket, "Key": self._key(source)})
                    parts.append({"ETag": answer["CopyPartResult"]["ETag"], "PartNumber": number})
                    continue
                for block in self.read(source):
                    pending += block
                    while len(pending) >= S3_PART:
                        send(pending[:S3_PART])
                        del pending[:S3_PART]
            if pending or not parts:
                send(pending)
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload,
                                                  MultipartUpload={"Parts": parts})
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=target, UploadId=upload)
            raise
        return total

    def open_local(self, key: str) -> BinaryIO | None:
        return None  # not on this machine: streamed through `read`

    def read(self, key: str) -> Iterator[bytes]:
        body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        yield from body.iter_chunks(READ_BLOCK)

    def size(self, key: str) -> int:
        return self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"]

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError  # noqa: PLC0415 - with boto3: S3 only

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ClientError:
            return False

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})

    def presigned_url(self, key: str, expires_in: int) -> str | None:
        return self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=expires_in)

    def check(self) -> None:
        self.client.head_bucket(Bucket=self.bucket)


def _link(source: Path, target: Path) -> None:
    """`target` names the same file as `source`; a copy where hard links are refused (another filesystem)."""
    try:
        os.link(source, target)
    except FileNotFoundError:
        raise
    except OSError:
        shutil.copyfile(source, target)


def _replace(built: Path, path: Path) -> None:
    """Put `built` (a file or a folder) at `path`, replacing what a previous join left there."""
    if path.is_dir() or (built.is_dir() and path.exists()):
        old = Path(tempfile.mkdtemp(dir=path.parent, prefix=".old-"))
        os.replace(path, old / "joined")
        os.replace(built, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(built, path)  # a file over a file (or nothing): atomic


def storage_from_url(url: str) -> FileStorage | S3Storage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStorage(parsed.path)
    if parsed.scheme == "s3":
        return S3Storage(parsed.netloc, parsed.path, endpoint_url=settings.AWS_ENDPOINT_URL)
    raise ValueError(f"EXPORT_STORAGE_URL must be file://… or s3://bucket/prefix, not {url!r}")


@lru_cache(maxsize=4)
def _cached(url: str) -> FileStorage | S3Storage:
    return storage_from_url(url)


def get_storage() -> FileStorage | S3Storage:
    """The configured storage (cached per URL, so tests that change the setting get a fresh one)."""
    return _cached(settings.EXPORT_STORAGE_URL)
