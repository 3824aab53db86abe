"""Compare-and-swap on one small object, one class per backend (the lease's storage).

Every backend offers the same three operations on the bytes of one path:

* ``read() -> (body, version)``; ``(None, None)`` when the object is absent.
* ``create(data) -> version | None``: write ``data`` only if the object is absent; None if it
  was not (another writer won).
* ``replace(data, version) -> version | None``: write ``data`` only if the object is still at
  ``version``; None if it changed (another writer won).

``version`` is an opaque token: the sha256 of the body, or the ETag on S3. What each backend
guarantees is listed in :mod:`storage.lease`; :func:`backend_for` picks one per location, once.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from storage.location import RunLocation

#: ``call(what, fn)``: run ``fn`` with the lease's retries; ``what`` names it in errors.
Call = Callable[[str, Callable[[], Any]], Any]

_memory_lock = threading.Lock()


class CasBackend(Protocol):
    """Compare-and-swap on one object; see the module docstring."""

    def read(self) -> tuple[bytes | None, str | None]: ...

    def create(self, data: bytes) -> str | None: ...

    def replace(self, data: bytes, version: str) -> str | None: ...


def backend_for(loc: RunLocation, path: str, call: Call, what: str = "lease") -> CasBackend:
    """The strongest backend for ``loc``'s filesystem, chosen by protocol. ``what`` names the
    object in errors (the lease; a checkpoint manifest, written create-only)."""
    if not isinstance(loc.fs, AbstractFileSystem):  # a wrapper (tests): through its methods
        return VerifyingCas(loc, path, call, what)
    if loc.is_local and isinstance(loc.fs, LocalFileSystem):
        return LocalFileCas(loc, path, call, what)
    if loc.protocol == "memory":
        return MemoryCas(loc, path, call, what)
    if loc.protocol in ("s3", "s3a") and hasattr(loc.fs, "call_s3"):
        return S3Cas(loc, path, call, what)
    return VerifyingCas(loc, path, call, what)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _FsRead:
    """``read`` through ``fs.cat_file``, versioned by sha256 (memory and generic backends)."""

    def __init__(self, loc: RunLocation, path: str, call: Call, what: str = "lease") -> None:
        self.fs, self.path, self.call, self.what = loc.fs, path, call, what

    def read(self) -> tuple[bytes | None, str | None]:
        try:
            data = self.call(f"read {self.what}", lambda: self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None, None
        return data, _digest(data)


class LocalFileCas(_FsRead):
    """Local files: exclusive create by ``os.link``; replace under ``fcntl.flock``."""

    def _write_temp(self, data: bytes) -> str:
        tmp = f"{self.path}.{uuid.uuid4().hex}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def create(self, data: bytes) -> str | None:
        def link() -> bool:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self._write_temp(data)
            try:
                os.link(tmp, self.path)  # atomic, fails if the object exists
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
            return True

        return _digest(data) if self.call(f"create {self.what}", link) else None

    def replace(self, data: bytes, version: str) -> str | None:
        import fcntl

        with open(self.path + ".lock", "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                try:
                    with open(self.path, "rb") as f:
                        current: str | None = _digest(f.read())
                except FileNotFoundError:
                    current = None
                if current != version:
                    return None
                os.replace(self._write_temp(data), self.path)
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)
        return _digest(data)


class MemoryCas(_FsRead):
    """``memory://``: compare and write under one process-wide lock."""

    def create(self, data: bytes) -> str | None:
        with _memory_lock:
            if self.fs.exists(self.path):
                return None
            self.call(f"create {self.what}", lambda: self.fs.pipe_file(self.path, data))
        return _digest(data)

    def replace(self, data: bytes, version: str) -> str | None:
        with _memory_lock:
            try:
                current: str | None = _digest(self.fs.cat_file(self.path))
            except FileNotFoundError:
                current = None
            if current != version:
                return None
            self.fs.pipe_file(self.path, data)
        return _digest(data)


class S3Cas:
    """S3: PutObject with ``If-None-Match: *`` / ``If-Match: <ETag>``, each write read back."""

    def __init__(self, loc: RunLocation, path: str, call: Call, what: str = "lease") -> None:
        self.fs, self.path, self.call, self.what = loc.fs, path, call, what
        self.bucket, self.key, _ = self.fs.split_path(path)

    def read(self) -> tuple[bytes | None, str | None]:
        def get() -> tuple[bytes, str]:
            resp = self.fs.call_s3("get_object", Bucket=self.bucket, Key=self.key)
            return _sync_read(self.fs, resp["Body"]), str(resp["ETag"])

        try:
            data, etag = self.call(f"read {self.what}", get)
        except FileNotFoundError:
            return None, None
        return data, etag

    def _put(
        self, what: str, data: bytes, lost: tuple[type[BaseException], ...], **condition: str
    ) -> str | None:
        """A conditional PutObject, then read back (write-then-verify, see storage.lease).

        None when the condition failed: S3's precondition answer, or an error in ``lost``."""
        try:
            resp = self.call(
                what,
                lambda: self.fs.call_s3(
                    "put_object", Bucket=self.bucket, Key=self.key, Body=data, **condition
                ),
            )
        except Exception as exc:
            if isinstance(exc, lost) or _is_precondition_failed(exc):
                return None
            raise
        self.fs.invalidate_cache(self.path)
        current, etag = self.read()
        if current != data:
            return None
        return etag or str(resp.get("ETag"))

    def create(self, data: bytes) -> str | None:
        return self._put(f"create {self.what}", data, (FileExistsError,), IfNoneMatch="*")

    def replace(self, data: bytes, version: str) -> str | None:
        return self._put(f"update {self.what}", data, (FileNotFoundError,), IfMatch=version)


class VerifyingCas(_FsRead):
    """Any other filesystem: compare, write, read back (write-then-verify; not exact)."""

    def create(self, data: bytes) -> str | None:
        if self.read() != (None, None):
            return None
        self.call(f"create {self.what}", lambda: self.fs.pipe_file(self.path, data))
        return self._verify(data)

    def replace(self, data: bytes, version: str) -> str | None:
        if self.read()[1] != version:
            return None
        self.call(f"update {self.what}", lambda: self.fs.pipe_file(self.path, data))
        return self._verify(data)

    def _verify(self, data: bytes) -> str | None:
        current, version = self.read()
        return version if current == data else None


def _is_precondition_failed(exc: BaseException) -> bool:
    """Whether ``exc`` (or a cause) is S3's answer to a conditional write that lost."""
    cur: BaseException | None = exc
    for _ in range(5):
        if cur is None:
            return False
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = str(response.get("Error", {}).get("Code", ""))
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in ("PreconditionFailed", "412", "ConditionalRequestConflict") or (
                status in (409, 412)
            )
        if "precondition" in str(cur).lower():
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _sync_read(fs: Any, body: Any) -> bytes:
    """Read an aiobotocore streaming body from sync code, on the filesystem's event loop."""
    from fsspec.asyn import sync

    async def read() -> bytes:
        try:
            return await body.read()
        finally:
            body.close()

    return sync(fs.loop, read)
