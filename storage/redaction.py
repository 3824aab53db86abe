"""The one redaction of secrets: one word list, one function for data, one for text.

Everything spotrain writes or prints (``run.json``'s spec, events, logs, status, error
messages) goes through :func:`redact` (data: a spec, a payload) or :func:`redact_text`
(a message). What counts as a secret:

- the value of any mapping key (at any depth, e.g. ``client_kwargs.aws_secret_access_key``)
  whose lowercased name contains one of :data:`SECRET_WORDS`, except the few names in
  :data:`SAFE_KEYS` (identifiers, not secrets);
- the user info of a URL (``scheme://user:pass@host``) and secret-looking query values
  (``?X-Amz-Signature=...``), in any string;
- every secret value seen so far in this process (:func:`remember_secrets`: a run's
  ``storage_options`` register theirs when its location is built), wherever it appears in text.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

#: A key whose lowercased name contains one of these holds a secret.
SECRET_WORDS = (
    "secret",
    "key",
    "token",
    "password",
    "passwd",
    "credential",
    "signature",
    "sig",
    "auth",
    "connection_string",
    "sas",
)
#: Keys that contain a secret word but name no secret (an id or a path prefix).
SAFE_KEYS = frozenset({"key_prefix", "kms_key_id", "sse_kms_key_id", "ssekms_key_id"})
#: What a secret is replaced with.
MASK = "***"
#: Values shorter than this are not remembered for text masking (they would erase words).
MIN_REMEMBERED_CHARS = 4

_URL_IN_TEXT = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"]+")
_remembered: set[str] = set()
_lock = threading.Lock()


def is_secret_key(key: Any) -> bool:
    """True when a mapping key of this name holds a secret (see :data:`SECRET_WORDS`)."""
    name = str(key).lower()
    return name not in SAFE_KEYS and any(w in name for w in SECRET_WORDS)


def redact(value: Any, key: Any = "") -> Any:
    """``value`` with every secret masked (a copy; mappings and lists recursively).

    ``key``: the name ``value`` is stored under (a secret key masks the whole value)."""
    if key != "" and is_secret_key(key) and value not in (None, "", {}, []):
        return MASK
    if isinstance(value, Mapping):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """``text`` with remembered secrets, URL user info and secret query values masked."""
    if not isinstance(text, str) or not text:
        return text
    with _lock:
        known = sorted(_remembered, key=len, reverse=True)
    for secret in known:
        text = text.replace(secret, MASK)
    return _URL_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)


def redact_url(url: str) -> str:
    """``url`` without user info (``user:pass@``) and with secret-looking query values masked;
    a URL without either is returned unchanged."""
    if not isinstance(url, str) or "://" not in url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    pairs = parse_qsl(parts.query, keep_blank_values=True) if parts.query else []
    secret_query = any(is_secret_key(k) for k, _ in pairs)
    if "@" not in netloc and not secret_query:
        # nothing to mask: the URL as given (urlunsplit would rewrite e.g. 'memory:///x')
        return url
    if "@" in netloc:
        netloc = MASK + "@" + netloc.rsplit("@", 1)[1]
    query = parts.query
    if secret_query:
        query = urlencode([(k, MASK if is_secret_key(k) else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def secret_values(value: Any, key: Any = "") -> Iterable[str]:
    """Every secret string in ``value``: values under secret keys, and URL user info."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            yield from secret_values(v, k if not (key and is_secret_key(key)) else key)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from secret_values(v, key)
    elif isinstance(value, str):
        if key != "" and is_secret_key(key) and len(value) >= MIN_REMEMBERED_CHARS:
            yield value
        yield from _url_user_info(value)


def _url_user_info(text: str) -> Iterable[str]:
    for match in _URL_IN_TEXT.finditer(text):
        try:
            netloc = urlsplit(match.group(0)).netloc
        except ValueError:
            continue
        if "@" in netloc:
            info = netloc.rsplit("@", 1)[0]
            for part in (info, *info.split(":")):
                if len(part) >= MIN_REMEMBERED_CHARS:
                    yield part


def remember_secrets(*values: Any) -> tuple[str, ...]:
    """Register the secrets found in ``values`` (:func:`secret_values`) so that
    :func:`redact_text` masks them anywhere in this process; returns them, longest first."""
    found = {s for v in values for s in secret_values(v)}
    with _lock:
        _remembered.update(found)
    return tuple(sorted(found, key=len, reverse=True))


__all__ = [
    "MASK",
    "SAFE_KEYS",
    "SECRET_WORDS",
    "is_secret_key",
    "redact",
    "redact_text",
    "redact_url",
    "remember_secrets",
    "secret_values",
]
