"""Field validation that collects every violation of a request before failing it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

from trackd.server.domain import limits
from trackd.server.errors import FailedPrecondition, FieldViolation, InvalidArgument

_KEY_RE = re.compile(r"[A-Za-z0-9_\-. /:]+")
_RUN_ID_RE = re.compile(r"[0-9a-f]{32}")
_MODEL_ID_RE = re.compile(r"m-[0-9a-f]{32}")
_EXPERIMENT_ID_RE = re.compile(r"(0|[1-9][0-9]{0,18})")


class Violations:
    """Accumulates field violations; `raise_if_any` fails with all of them at once."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        """Records that `field` is invalid, saying why."""
        self.items.append(FieldViolation(field, description))

    def raise_if_any(self) -> None:
        """Raises InvalidArgument naming every recorded violation, if there is one."""
        if self.items:
            raise InvalidArgument.of(self.items)

    def text(self, field: str, value: str, *, max_len: int, required: bool = False) -> bool:
        """Checks a free-text value: no NUL, at most `max_len` characters. True if valid."""
        if required and not value:
            self.add(field, "must not be empty")
            return False
        if "\x00" in value:
            self.add(field, "must not contain the NUL character")
            return False
        if _has_lone_surrogate(value):
            self.add(field, "must be valid UTF-8 (it holds a lone surrogate)")
            return False
        if len(value) > max_len:
            self.add(field, f"is {len(value)} characters long; the limit is {max_len}")
            return False
        return True

    def key(self, field: str, value: str, *, max_len: int = limits.KEY_MAX) -> bool:
        """Checks a metric, param or tag key against MLflow's key rules. True if valid."""
        if not self.text(field, value, max_len=max_len, required=True):
            return False
        if not _KEY_RE.fullmatch(value):
            self.add(
                field,
                f"{_shorten(value)!r} may only hold letters, digits and '_ - . space / :'",
            )
            return False
        if ".." in value:
            self.add(field, f"{_shorten(value)!r} must not contain '..'")
            return False
        if value.startswith("/"):
            self.add(field, f"{_shorten(value)!r} must not start with '/'")
            return False
        return True

    def count(self, field: str, items: Iterable[object] | int, *, max_count: int) -> bool:
        """Checks how many entries a repeated field has. True if within the limit."""
        n = items if isinstance(items, int) else sum(1 for _ in items)
        if n > max_count:
            self.add(field, f"has {n} entries; the limit is {max_count}")
            return False
        return True

    def non_negative(self, field: str, value: int) -> bool:
        """Checks that an integer (a time in milliseconds, a count) is >= 0."""
        if value < 0:
            self.add(field, f"is {value}; it must be >= 0")
            return False
        return True


def item(field: str, i: int, name: str) -> str:
    """Path of a field of item i of a repeated field (`metrics[3].key`); just `name` when
    `field` is empty, for a single-item request such as LogParam."""
    return f"{field}[{i}].{name}" if field else name


def params(
    v: Violations, field: str, items: Sequence[tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """Checks params (key rules, value <= 6000 characters, no key with two values) and
    returns their distinct keys and values."""
    merged: dict[str, str] = {}
    for i, (key, value) in enumerate(items):
        ok = v.key(item(field, i, "key"), key)
        ok = v.text(item(field, i, "value"), value, max_len=limits.PARAM_VALUE_MAX) and ok
        if not ok:
            continue
        if key in merged and merged[key] != value:
            v.add(
                item(field, i, "value"),
                f"param {key!r} appears twice in the batch, with {merged[key]!r} and {value!r}",
            )
        merged[key] = value
    return list(merged), list(merged.values())


def tags(
    v: Violations,
    field: str,
    items: Sequence[tuple[str, str]],
    *,
    value_max: int,
    value_max_of: Mapping[str, int] | None = None,
) -> tuple[list[str], list[str]]:
    """Checks tags (key rules, values within `value_max`, or the limit `value_max_of` gives
    a key) and returns their distinct keys and values, the last value of a key winning."""
    merged: dict[str, str] = {}
    for i, (key, value) in enumerate(items):
        ok = v.key(item(field, i, "key"), key)
        limit = value_max_of.get(key, value_max) if value_max_of else value_max
        ok = v.text(item(field, i, "value"), value, max_len=limit) and ok
        if ok:
            merged[key] = value
    return list(merged), list(merged.values())


def fresh_params(
    stored: Mapping[str, str],
    keys: Sequence[str],
    values: Sequence[str],
    owner: str,
    metadata: dict[str, str],
) -> tuple[list[str], list[str]]:
    """The params not stored yet among keys/values. Params are immutable: a stored key with
    another value raises FailedPrecondition naming `owner` ("run 0a1b...")."""
    fresh_keys: list[str] = []
    fresh_values: list[str] = []
    for key, value in zip(keys, values, strict=True):
        old = stored.get(key)
        if old is None:
            fresh_keys.append(key)
            fresh_values.append(value)
        elif old != value:
            raise FailedPrecondition(
                f"param {key!r} of {owner} is {old!r}; params are immutable, so it "
                f"cannot become {value!r}",
                metadata={**metadata, "key": key},
            )
    return fresh_keys, fresh_values


def experiment_ids(values: Sequence[str], *, maximum: int) -> list[int]:
    """Parses 1 to `maximum` experiment ids (field `experiment_ids`); sorted, distinct."""
    if not values:
        raise InvalidArgument.for_field("experiment_ids", "must name at least one experiment")
    if len(values) > maximum:
        raise InvalidArgument.for_field(
            "experiment_ids", f"has {len(values)} entries; the limit is {maximum}"
        )
    return sorted({experiment_id(e, f"experiment_ids[{i}]") for i, e in enumerate(values)})


def run_id(value: str, field: str = "run_id") -> str:
    """Returns a well-formed run id (32 lowercase hex digits) or raises InvalidArgument."""
    if not _RUN_ID_RE.fullmatch(value):
        raise InvalidArgument.for_field(
            field, f"{_shorten(value)!r} is not a run id (32 lowercase hex digits)"
        )
    return value


def is_model_id(value: str) -> bool:
    """Whether `value` is a well-formed logged model id ("m-" and 32 lowercase hex digits)."""
    return _MODEL_ID_RE.fullmatch(value) is not None


def model_id(value: str, field: str = "model_id") -> str:
    """Returns a well-formed logged model id or raises InvalidArgument."""
    if not is_model_id(value):
        raise InvalidArgument.for_field(
            field, f"{_shorten(value)!r} is not a model id ('m-' and 32 lowercase hex digits)"
        )
    return value


def experiment_id(value: str, field: str = "experiment_id") -> int:
    """Parses an experiment id (a decimal string) or raises InvalidArgument."""
    if not _EXPERIMENT_ID_RE.fullmatch(value) or int(value) > limits.INT64_MAX:
        raise InvalidArgument.for_field(
            field, f"{_shorten(value)!r} is not an experiment id (a decimal number)"
        )
    return int(value)


def page_size(value: int, *, default: int, maximum: int, field: str = "max_results") -> int:
    """Resolves a page size: 0 means the default; negative or above the maximum fails."""
    if value == 0:
        return default
    if value < 0 or value > maximum:
        raise InvalidArgument.for_field(field, f"is {value}; it must be between 1 and {maximum}")
    return value


def _has_lone_surrogate(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _shorten(value: str, n: int = 60) -> str:
    return value if len(value) <= n else value[:n] + "..."
