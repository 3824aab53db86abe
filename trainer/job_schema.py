"""Building blocks of the job schema (``trainer.job``, ``cluster.spec``): one config, the rule
texts errors quote, and the translation of a pydantic ``ValidationError`` into one
``(field, value, allowed)`` triple, e.g. ``("checkpoint.keep_last", -1, "allowed: 0 (keep all)
or an integer >= 1")``. Both layers raise their own error class from that triple.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, ValidationError
from pydantic_core import PydanticCustomError

#: Every schema dataclass: unknown keys are errors, a field is given by its name or (the YAML
#: spelling, e.g. ``async``) its alias; error locations use field names (mapped back by
#: :func:`first_error`). A field's docstring is its JSON Schema description.
SCHEMA_CONFIG = ConfigDict(
    extra="forbid",
    validate_by_name=True,
    validate_by_alias=True,
    loc_by_alias=False,
    use_attribute_docstrings=True,
)


@dataclass(frozen=True)
class Rule:
    """``Annotated`` metadata: what a field allows, as errors say it (``allowed: <text>``)."""

    text: str


POSITIVE_INT = Rule("an integer >= 1")
NON_NEGATIVE_INT = Rule("an integer >= 0")

#: Bounds of the job's counts, checked by the spec before Ray or TensorFlow start (a value past
#: them would only fail inside the workers). Seeds: NumPy's and TensorFlow's 32-bit seeds.
MAX_SEED = 2**32 - 1
#: Epochs: far past any real run, and epochs x steps stays within a step number (10**12).
MAX_EPOCHS = 1_000_000
#: Batch sizes: TensorFlow's int32 shapes.
MAX_BATCH_SIZE = 2**31 - 1
#: Step counts (save every N steps, poll every N steps): a step number's range.
MAX_STEPS = 10**12 - 1
#: Counts of checkpoints kept: int64.
MAX_INT64 = 2**63 - 1
SEED_RULE = Rule(f"an integer from 0 to {MAX_SEED}")
EPOCHS_RULE = Rule(f"an integer from 1 to {MAX_EPOCHS}")
BATCH_RULE = Rule(f"an integer from 1 to {MAX_BATCH_SIZE}")

_TYPE_NAMES = {
    "int_type": "an integer",
    "bool_type": "true or false",
    "string_type": "a string",
    "float_type": "a number",
    "dict_type": "a mapping",
    "list_type": "a list",
    "tuple_type": "a list",
}
_EXTRA = ("extra_forbidden", "unexpected_keyword_argument")
_CUSTOM = "spotrain"


def invalid(allowed: str, value: Any, field: str | int = "") -> PydanticCustomError:
    """The error a validator raises: ``field`` (below the validated one: a dotted path, or an
    item's index), the value, and the full hint (``"allowed: ..."`` or ``"expected ..."``)."""
    return PydanticCustomError(
        _CUSTOM, "{allowed}", {"allowed": allowed, "value": value, "field": field}
    )


def schema_fields(cls: type) -> dict[str, Any]:
    """The pydantic ``FieldInfo`` of each field of a schema dataclass, by field name."""
    return dict(getattr(cls, "__pydantic_fields__", {}))


def yaml_key(name: str, info: Any) -> str:
    return info.alias or name


def section_type(info: Any) -> type | None:
    """The schema dataclass a field holds (``checkpoint`` -> CheckpointPolicy), or None."""
    for candidate in (info.annotation, *typing.get_args(info.annotation)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def drop_nulls(raw: Mapping[str, Any], cls: type) -> dict[str, Any]:
    """``raw`` without keys set to null (null means "the default"), also inside sections."""
    by_key = {}
    for name, info in schema_fields(cls).items():
        by_key[name] = info
        by_key[yaml_key(name, info)] = info
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if value is None:
            continue
        info = by_key.get(key)
        sub = section_type(info) if info is not None else None
        if sub is not None and isinstance(value, Mapping):
            value = drop_nulls(value, sub)
        out[key] = value
    return out


def first_error(exc: ValidationError, root: type, *, by_alias: bool) -> tuple[str, Any, str]:
    """``(field path, value, allowed)`` of the error to report first: unknown fields, then
    missing ones, then the others in field order. ``by_alias``: name fields as YAML does."""
    errors = exc.errors()
    rank = {t: i for i, t in enumerate((*_EXTRA, "missing"))}
    err = min(errors, key=lambda e: rank.get(e["type"], len(rank)))
    loc = tuple(err["loc"])
    ctx = err.get("ctx") or {}
    kind = err["type"]
    owner, info = _walk(root, loc)
    value = err.get("input")
    if kind == _CUSTOM:
        field = ctx.get("field", "")
        sub = (field,) if isinstance(field, int) else tuple(p for p in field.split(".") if p)
        return _path(root, loc + sub, by_alias), ctx.get("value"), str(ctx["allowed"])
    path = _path(root, loc, by_alias, extra=kind in _EXTRA)
    if kind == "missing":
        return path, None, "this field is required"
    if kind in _EXTRA:
        keys = [yaml_key(n, i) if by_alias else n for n, i in schema_fields(owner).items()]
        keys = [k for k in keys if k not in getattr(owner, "_internal_fields", ())]
        listed = sorted(keys) if len(loc) == 1 else keys
        return path, value, "unknown field; allowed: " + ", ".join(repr(k) for k in listed)
    if kind in ("dataclass_type", "model_type"):
        return path, value, "expected a mapping"
    if kind in _TYPE_NAMES:
        return path, value, f"expected {_TYPE_NAMES[kind]}, got {type(value).__name__}"
    rules = [m for m in (info.metadata if info is not None else []) if isinstance(m, Rule)]
    if rules:
        if info.annotation is float and isinstance(value, int):
            value = float(value)  # as validated: an int given for a number is a float
        return path, value, "allowed: " + rules[0].text
    return path, value, err["msg"]


def _walk(root: type, loc: tuple[Any, ...]) -> tuple[type, Any]:
    """The dataclass that owns the last part of ``loc``, and that part's FieldInfo (or None)."""
    owner: type = root
    info = None
    for i, part in enumerate(loc):
        if isinstance(part, int):
            continue
        info = schema_fields(owner).get(part)
        if info is None or i == len(loc) - 1:
            break
        owner = section_type(info) or owner
    return owner, info


def _path(root: type, loc: tuple[Any, ...], by_alias: bool, extra: bool = False) -> str:
    """``loc`` as a dotted path; ``extra``: its last part is an unknown key, kept as given."""
    out = ""
    owner: type | None = root
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        unknown_key = extra and i == len(loc) - 1
        info = None if owner is None or unknown_key else schema_fields(owner).get(part)
        key = yaml_key(part, info) if (by_alias and info is not None) else str(part)
        out += ("." if out else "") + key
        owner = section_type(info) if info is not None else None
    return out
