"""Field validation that collects every violation of a request before failing it."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from urllib.parse import urlsplit

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
    """Checks untyped params (a logged model's: the rules of typed_params, every param
    untyped) and returns their distinct keys and values."""
    checked = typed_params(v, field, [(key, value, PARAM_UNSPECIFIED) for key, value in items])
    return checked.keys, checked.values


# trackd.v1.ParamType numbers and names.
PARAM_UNSPECIFIED, PARAM_STRING, PARAM_INT, PARAM_DOUBLE, PARAM_BOOL = range(5)
PARAM_TYPE_NAMES = ("UNSPECIFIED", "STRING", "INT", "DOUBLE", "BOOL")
_INT_LITERAL_RE = re.compile(r"[-+]?[0-9]+")
_DOUBLE_LITERAL_RE = re.compile(
    r"[-+]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE
)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass
class TypedParams:
    """Distinct params of a request, column-wise: keys, MLflow string forms, ParamType
    numbers, and the exact value of INT and DOUBLE ones (None for the others)."""

    keys: list[str] = field(default_factory=list)
    values: list[str] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    numbers: list[Decimal | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)


def param_number(value: str, type_: int) -> Decimal | str | None:
    """The exact number an INT or DOUBLE param's string form stands for (None for other
    types), or a string saying why the value is not a literal of its type."""
    if type_ == PARAM_INT:
        if not _INT_LITERAL_RE.fullmatch(value):
            return "is not an INT literal (decimal digits with an optional sign)"
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            return "is beyond the int64 range of an INT param"
        return Decimal(number)
    if type_ == PARAM_DOUBLE:
        if not _DOUBLE_LITERAL_RE.fullmatch(value):
            return "is not a DOUBLE literal (such as 0.001, 1e-05, nan, inf or -inf)"
        # The double the literal rounds to, kept exactly (1e400 is +inf, as when parsed).
        return Decimal(float(value))
    if type_ == PARAM_BOOL and value.lower() not in ("true", "false"):
        return "is not a BOOL literal (true or false, in any letter case)"
    return None


def same_param(old: tuple[str, int], new: tuple[str, int]) -> bool:
    """Whether a param logged as `new` (value, type) repeats `old`: the same string form,
    and the same type unless either is untyped (PARAM_UNSPECIFIED)."""
    return old[0] == new[0] and (old[1] == new[1] or PARAM_UNSPECIFIED in (old[1], new[1]))


def typed_params(v: Violations, field: str, items: Sequence[tuple[str, str, int]]) -> TypedParams:
    """Checks run params (key rules, value <= 6000 characters and a literal of its type, a
    known type, no key with two values) and returns the distinct ones. A key given twice
    with the same value keeps the typed one."""
    merged: dict[str, tuple[str, int, Decimal | None]] = {}
    for i, (key, value, type_) in enumerate(items):
        ok = v.key(item(field, i, "key"), key)
        ok = v.text(item(field, i, "value"), value, max_len=limits.PARAM_VALUE_MAX) and ok
        if not 0 <= type_ < len(PARAM_TYPE_NAMES):
            v.add(item(field, i, "type"), f"{type_} is not a ParamType")
            continue
        if not ok:
            continue
        number = param_number(value, type_)
        if isinstance(number, str):
            v.add(item(field, i, "value"), f"{_shorten(value)!r} {number}")
            continue
        old = merged.get(key)
        if old is not None and not same_param(old[:2], (value, type_)):
            v.add(
                item(field, i, "value"),
                f"param {key!r} appears twice in the batch, as {_typed(old[0], old[1])} and "
                f"{_typed(value, type_)}",
            )
        if old is None or old[1] == PARAM_UNSPECIFIED:
            merged[key] = (value, type_, number)
    out = TypedParams()
    for key, (value, type_, number) in merged.items():
        out.keys.append(key)
        out.values.append(value)
        out.types.append(type_)
        out.numbers.append(number)
    return out


def fresh_typed_params(
    stored: Mapping[str, tuple[str, int]],
    params: TypedParams,
    owner: str,
    metadata: dict[str, str],
) -> TypedParams:
    """The params not stored yet. Params are immutable: a stored key with another value
    (see same_param) raises FailedPrecondition naming `owner` ("run 0a1b...")."""
    fresh = TypedParams()
    for key, value, type_, number in zip(
        params.keys, params.values, params.types, params.numbers, strict=True
    ):
        old = stored.get(key)
        if old is None:
            fresh.keys.append(key)
            fresh.values.append(value)
            fresh.types.append(type_)
            fresh.numbers.append(number)
        elif not same_param(old, (value, type_)):
            raise FailedPrecondition(
                f"param {key!r} of {owner} is {_typed(*old)}; params are immutable, so it "
                f"cannot become {_typed(value, type_)}",
                metadata={**metadata, "key": key},
            )
    return fresh


def _typed(value: str, type_: int) -> str:
    """A param value for a message: `'0.1'` untyped, `DOUBLE '0.1'` typed."""
    shown = repr(_shorten(value))
    return shown if type_ == PARAM_UNSPECIFIED else f"{PARAM_TYPE_NAMES[type_]} {shown}"


def external_url(v: Violations, field: str, url: str) -> bool:
    """Checks a run's external URL: empty, or an absolute http or https URL of at most
    EXTERNAL_URL_MAX characters without white space. True if valid."""
    if not url:
        return True
    if not v.text(field, url, max_len=limits.EXTERNAL_URL_MAX):
        return False
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        v.add(field, "must not contain white space or control characters")
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        v.add(field, f"{_shorten(url)!r} is not an absolute http or https URL")
        return False
    return True


def run_source(v: Violations, field: str, type_: int, source_id: str) -> bool:
    """Checks a run source: a RunSourceType number and an id of at most SOURCE_ID_MAX
    characters, which needs a type. True if valid."""
    ok = True
    if not 0 <= type_ < limits.RUN_SOURCE_TYPES:
        v.add(f"{field}.type", f"{type_} is not a RunSourceType")
        ok = False
    if not v.text(f"{field}.id", source_id, max_len=limits.SOURCE_ID_MAX):
        ok = False
    elif source_id and type_ == 0:
        v.add(f"{field}.type", "must be given with an id (JOB, NOTEBOOK, CONTAINER, ...)")
        ok = False
    return ok


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
    """The untyped params not stored yet among keys/values (fresh_typed_params with every
    param untyped)."""
    fresh = fresh_typed_params(
        {key: (value, PARAM_UNSPECIFIED) for key, value in stored.items()},
        TypedParams(list(keys), list(values), [PARAM_UNSPECIFIED] * len(keys), [None] * len(keys)),
        owner,
        metadata,
    )
    return fresh.keys, fresh.values


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
