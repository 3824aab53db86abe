"""Run URLs: validation, redaction, and the one object that owns every path of a run.

A run lives under one fsspec URL (``file://``, a bare local path, ``memory://``, ``s3://``,
``gs://``...). Layout::

    <run>/run.json                      spec + fingerprint
    <run>/events/<seq>-<kind>.json      one object per event
    <run>/lease.json                    holder + expiry
    <run>/checkpoints/<step:012d>/...   files, then MANIFEST.json last (= the commit)

Credentials are taken from ``storage_options``, the environment or fsspec config, and never
appear in logs or errors: :mod:`storage.redaction` (the one redaction) strips user info and
secret query parameters, and :meth:`RunLocation.redact` also masks every secret value found in
``storage_options`` or the URL's user info.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.core import split_protocol, url_to_fs
from fsspec.spec import AbstractFileSystem

from storage.constants import MANIFEST_NAME, MAX_STEP, STEP_DIGITS
from storage.errors import InvalidNameError, PermanentStorageError, UnsupportedStorageError
from storage.redaction import MASK, redact_text, redact_url, remember_secrets
from storage.retry import RetryOptions, call_with_retry

#: Path components (a run's directory): lowercase letters, digits, '-', '_', '.'; start with a
#: letter or digit; no '..'. Wider than RUN_NAME_RE: URLs of runs spotrain did not name pass.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
#: The run-name rule of names spotrain creates (the job spec's ``name``): DNS-label-like, so a
#: name is also a valid Kubernetes / Ray job name.
RUN_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
MAX_RUN_NAME_CHARS = 63
RUN_NAME_RULE = (
    f"lowercase letters, digits and '-' ([a-z0-9-]+, at most {MAX_RUN_NAME_CHARS} "
    "characters, not starting or ending with '-')"
)


def validate_run_name(name: str) -> str:
    """Return ``name`` if it follows the run-name rule (RUN_NAME_RULE), else InvalidNameError."""
    if not isinstance(name, str) or not RUN_NAME_RE.match(name) or len(name) > MAX_RUN_NAME_CHARS:
        raise InvalidNameError(f"run name={name!r} is not allowed; fix: use {RUN_NAME_RULE}")
    return name


def validate_name(name: str, what: str = "run name") -> str:
    """Return ``name`` if it is a safe single path component, else raise InvalidNameError.

    This is the path-safety check of any run directory (also of runs spotrain did not name);
    names spotrain creates follow the narrower :func:`validate_run_name`."""
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise InvalidNameError(
            f"{what}={name!r} is not allowed; fix: use 1-128 characters from [a-z0-9._-], "
            "starting with a letter or digit, without '..', '/' or '\\\\' (e.g. 'digits-mlp')"
        )
    return name


def validate_step(step: Any) -> int:
    """Return ``step`` if it is an int in [0, 10**12), else raise InvalidNameError."""
    if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= MAX_STEP:
        raise InvalidNameError(
            f"step={step!r} is not allowed; fix: pass an int between 0 and {MAX_STEP}"
        )
    return step


def validate_relpath(path: str) -> str:
    """A file path inside a checkpoint: relative, '/'-separated, no '..' or empty parts."""
    parts = path.split("/")
    if (
        not path
        or path.startswith("/")
        or "\\" in path
        or any(p in ("", ".", "..") for p in parts)
        or re.match(r"^[A-Za-z]:", path)
    ):
        raise InvalidNameError(
            f"checkpoint file path={path!r} is not allowed; fix: relative paths inside the "
            "checkpoint directory only, without '..' or empty components"
        )
    return path


def step_dirname(step: int) -> str:
    return f"{validate_step(step):0{STEP_DIGITS}d}"


def parse_step_dirname(name: str) -> int | None:
    """The step of a ``<step:012d>`` directory name, or None for anything else."""
    if len(name) == STEP_DIGITS and name.isdigit():
        return int(name)
    return None


def _open_fs(url: str, protocol: str | None, options: dict[str, Any]) -> tuple[Any, str]:
    """``url_to_fs`` with its set-up errors as :class:`UnsupportedStorageError` (with the fix)."""
    try:
        return url_to_fs(url, **options)
    except ImportError as exc:  # fsspec knows the protocol, its package is missing
        detail = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        raise UnsupportedStorageError(
            f"storage {redact_url(url)!r} needs a package that is not installed ({detail}); "
            f"fix: install the fsspec backend of {protocol}:// (e.g. pip install gcsfs for "
            "gs://, s3fs for s3://, adlfs for az://)"
        ) from None
    except TypeError as exc:  # an option the backend does not take
        raise UnsupportedStorageError(
            f"storage {redact_url(url)!r}: the {protocol or 'file'} backend refused the "
            f"storage_options ({redact_text(str(exc))}); fix: pass only options it accepts "
            f"(keys given: {sorted(map(str, options))})"
        ) from None
    except ValueError as exc:
        if "protocol not known" not in str(exc).lower():
            raise
        known = ", ".join(f"{p}://" for p in ("file", "memory", "s3", "gs", "az", "hdfs"))
        raise UnsupportedStorageError(
            f"storage {redact_url(url)!r} has an unknown protocol {protocol!r}; fix: use a "
            f"protocol fsspec knows ({known}...), or a local path"
        ) from None


def join_run_url(base: str, name: str) -> str:
    """The run URL of run ``name`` under ``base`` (``file://./runs`` -> ``file://./runs/name``)."""
    validate_name(name)
    if not base:
        raise InvalidNameError(
            "storage base URL is empty; fix: pass e.g. 'file://./runs' or 's3://bucket/runs'"
        )
    return base.rstrip("/") + "/" + name


@dataclass
class RunLocation:
    """Every path of one run, on one fsspec filesystem.

    Build with :meth:`from_url`. ``url`` is redacted (safe to log); ``root`` is the path of the
    run on ``fs`` (no protocol).
    """

    fs: AbstractFileSystem
    root: str
    url: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def from_url(
        cls,
        url: str,
        storage_options: Mapping[str, Any] | None = None,
        fs: AbstractFileSystem | None = None,
    ) -> RunLocation:
        """Resolve ``url`` with fsspec. ``fs`` (optional) replaces the resolved filesystem, e.g.
        a fault-injecting wrapper in tests; ``root`` is then ``fs._strip_protocol(url)``."""
        if not isinstance(url, str) or not url.strip():
            raise InvalidNameError(
                f"run url={url!r} is empty; fix: pass e.g. 'file://./runs/my-run' or "
                "'s3://bucket/runs/my-run'"
            )
        options = dict(storage_options or {})
        secrets = remember_secrets(options, url)
        protocol, _ = split_protocol(url)
        if fs is None:
            if protocol in (None, "file", "local") and "auto_mkdir" not in options:
                options["auto_mkdir"] = True
            fs, root = _open_fs(url, protocol, options)
        else:
            root = fs._strip_protocol(url)
        root = root.rstrip("/")
        parts = [p for p in root.split("/") if p]
        if ".." in root.split("/") or not parts:
            raise InvalidNameError(
                f"run url={redact_url(url)!r} resolves to root {root!r}; fix: point it at a "
                "dedicated run directory below a base, without '..' (use join_run_url)"
            )
        return cls(fs=fs, root=root, url=redact_url(url), secrets=secrets)

    @classmethod
    def resolve(
        cls,
        run: str | RunLocation,
        storage_options: Mapping[str, Any] | None = None,
        fs: AbstractFileSystem | None = None,
    ) -> RunLocation:
        """``run`` itself when it is a RunLocation, else :meth:`from_url` of the URL ``run``.

        Every storage class takes its run this way: build the location once, pass it on.
        """
        if not isinstance(run, RunLocation):
            return cls.from_url(run, storage_options, fs=fs)
        if storage_options or fs is not None:
            raise TypeError(
                f"run={run.url!r} is already a RunLocation; fix: pass storage_options and fs to "
                "RunLocation.from_url, not beside a RunLocation"
            )
        return run

    # -- paths -----------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def run_json(self) -> str:
        return self.path("run.json")

    @property
    def events_dir(self) -> str:
        return self.path("events")

    @property
    def lease_path(self) -> str:
        return self.path("lease.json")

    @property
    def checkpoints_dir(self) -> str:
        return self.path("checkpoints")

    def step_dir(self, step: int) -> str:
        return self.path("checkpoints", step_dirname(step))

    def manifest_path(self, step: int) -> str:
        return self.step_dir(step) + "/" + MANIFEST_NAME

    def split_checkpoint_path(self, path: str) -> tuple[int, str] | None:
        """``(step, path inside the step directory)`` of a path listed under
        ``checkpoints_dir`` (``""`` for the step directory itself), or None for anything that
        is not inside a ``<step:012d>`` directory. The one parser of listed step paths."""
        prefix = self.checkpoints_dir.rstrip("/") + "/"
        path = path.rstrip("/")
        idx = path.find(prefix)
        if idx < 0:
            return None
        name, _, rel = path[idx + len(prefix) :].partition("/")
        step = parse_step_dirname(name)
        return None if step is None else (step, rel)

    def display(self, path: str) -> str:
        """A loggable form of ``path`` (a path on ``fs``): the redacted URL plus the suffix."""
        if path.startswith(self.root):
            return self.url.rstrip("/") + path[len(self.root) :]
        return self.redact(path)

    # -- facts about the backend ---------------------------------------------------------------
    @property
    def protocol(self) -> str:
        proto = self.fs.protocol
        return proto if isinstance(proto, str) else proto[0]

    @property
    def is_local(self) -> bool:
        return self.protocol in ("file", "local")

    def check_writable(self) -> None:
        """Write and delete a probe object under the run; PermanentStorageError (with the fix)
        or TransientStorageError if that fails. Call it once before starting a run."""
        probe = self.path(f".spotrain-probe-{uuid.uuid4().hex}")

        def write_and_delete() -> None:
            try:
                self.fs.pipe_file(probe, b"ok")
            except (FileExistsError, NotADirectoryError, IsADirectoryError) as exc:
                # path-level errors pass call_with_retry unchanged; for the probe they mean the
                # run's directory cannot exist there (a file stands where a directory should be)
                detail = self.redact(f"{type(exc).__name__}: {exc}")
                raise PermanentStorageError(
                    f"write probe failed on {self.url}: {detail}; fix: point the run's storage "
                    "at a directory (or a prefix) that can be created, not below a file",
                    self.url,
                ) from None
            self.fs.rm(probe)

        call_with_retry(
            write_and_delete,
            what="write probe",
            url=self.url,
            options=RetryOptions(),
            redact=self.redact,
        )

    def redact(self, text: str) -> str:
        """``text`` with every secret of ``storage_options`` and URL credentials masked (this
        location's own secrets too when it was unpickled in another process)."""
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return redact_text(text)


__all__ = [
    "NAME_RE",
    "RUN_NAME_RE",
    "RUN_NAME_RULE",
    "RunLocation",
    "join_run_url",
    "parse_step_dirname",
    "redact_url",
    "step_dirname",
    "validate_name",
    "validate_relpath",
    "validate_run_name",
    "validate_step",
]
