"""The client's own checks of what it logs, so that a bad key or value is reported by the
call that logs it (`run.log_metric`, `logger.put`, ...), not by the flush at the end of
the run.

The rules mirror the server's (the same limits, which are MLflow's, and the same key
rules), so that what passes here is what the server accepts:

- a key (of a metric, param or tag) is a `str` of 1 to 250 characters, made only of
  letters, digits and `_ - . space / :`, without `..` and not starting with `/`;
- a param value is at most 6,000 characters, a run tag value at most 8,000 (an experiment
  tag value at most 5,000), neither holding the NUL character nor a lone surrogate;
- a step is an int64, a timestamp (milliseconds since the Unix epoch) an int64 >= 0.

A value of the wrong type raises `TypeError` naming the field; a value of the right type
that breaks a rule raises `trackd.client.errors.InvalidArgumentError` (code
INVALID_ARGUMENT, reason INVALID_PARAMETER_VALUE, `violations` {field: what is wrong}),
as the server would answer.

Valid keys are remembered (up to 100,000 of them, then the memory starts over), so that
checking a key already seen costs one set lookup.
"""

from __future__ import annotations

import decimal
import numbers
import operator
import re
import time
from typing import Final

import grpc

from trackd.client.errors import InvalidArgumentError
from trackd.v1 import run_pb2

# The server's limits (trackd.server.domain.limits), copied: the client does not import
# the server.
KEY_MAX: Final = 250
PARAM_VALUE_MAX: Final = 6000
TAG_VALUE_MAX: Final = 8000
EXPERIMENT_TAG_VALUE_MAX: Final = 5000
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1

_KEY_RE: Final = re.compile(r"[A-Za-z0-9_\-. /:]+")
_REASON: Final = "INVALID_PARAMETER_VALUE"

# Keys that passed check_key. The logger's hot path reads it directly (a set lookup);
# it is cleared, never replaced, when it grows past _KEY_CACHE_MAX.
_KEY_CACHE: Final[set[str]] = set()
_KEY_CACHE_MAX: Final = 100_000


def invalid(field: str, description: str) -> InvalidArgumentError:
    """The error the server would answer for one invalid field: INVALID_ARGUMENT, reason
    INVALID_PARAMETER_VALUE, the message "<field>: <description>", and
    `violations` {field: description}."""
    return InvalidArgumentError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"{field}: {description}",
        reason=_REASON,
        violations={field: description},
    )


def check_key(key: object, field: str = "key") -> str:
    """Returns `key` if it is a valid metric, param or tag key (as a plain str).

    Valid: 1 to 250 characters, only letters, digits and `_ - . space / :`, no `..`,
    not starting with `/`. A key that passed once is remembered, so checking it again
    costs one set lookup.

    Args:
        key: the key to check.
        field: the field's name in error messages and `violations`.

    Raises:
        TypeError: key is not a str.
        InvalidArgumentError: key breaks a rule (empty, too long, a character outside the
            set, `..`, a leading `/`).
    """
    if not isinstance(key, str):
        raise TypeError(f"{field} must be a str, not {type(key).__name__}")
    if key in _KEY_CACHE:
        return key
    text = str.__str__(key)
    _check_key_text(text, field)
    if len(_KEY_CACHE) >= _KEY_CACHE_MAX:
        _KEY_CACHE.clear()
    _KEY_CACHE.add(text)
    return text


def _check_key_text(key: str, field: str) -> None:
    # The server's order of checks (validation.Violations.key), so that the first
    # violation named is the one the server would name.
    if not key:
        raise invalid(field, "must not be empty")
    _check_text(key, field, KEY_MAX)
    if not _KEY_RE.fullmatch(key):
        raise invalid(
            field, f"{_shorten(key)!r} may only hold letters, digits and '_ - . space / :'"
        )
    if ".." in key:
        raise invalid(field, f"{_shorten(key)!r} must not contain '..'")
    if key.startswith("/"):
        raise invalid(field, f"{_shorten(key)!r} must not start with '/'")


def metric_value(value: object, field: str = "value") -> float:
    """Returns a metric value as a float.

    Accepted: float and int, and any other real number (`numbers.Real`: numpy's float and
    integer scalars, fractions.Fraction, ...) and decimal.Decimal, as `float(value)`. NaN
    and the infinities are valid values. A bool is refused, as MLflow refuses it (True is
    more likely a flag logged by mistake than the number 1.0), and so are strings ("0.5"
    is not converted), bytes, None and any other object.

    Raises:
        TypeError: value is not a real number (or is a bool).
        InvalidArgumentError: value is an integer too large for a float.
    """
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real | decimal.Decimal):
        shown = "None" if value is None else type(value).__name__
        raise TypeError(f"metric {field} must be a number, not {shown}")
    try:
        return float(value)
    except (OverflowError, ValueError):  # a huge int or Fraction; Decimal("sNaN")
        raise invalid(field, f"{_shorten(repr(value))} is not a 64-bit float") from None


def step_value(step: object, field: str = "step") -> int:
    """Returns a step as an int: any integer (int, numpy integers: whatever
    `operator.index` takes) within int64; None means 0, as in MLflow.

    Raises:
        TypeError: step is not an integer (a float, a str...) or is a bool.
        InvalidArgumentError: step is outside int64.
    """
    if step is None:
        return 0
    n = _integer(step, field)
    if not INT64_MIN <= n <= INT64_MAX:
        raise invalid(field, f"is {n}; it must be within int64")
    return n


def timestamp_value(timestamp: object, field: str = "timestamp") -> int:
    """Returns a timestamp in milliseconds since the Unix epoch: any integer from 0 to
    the int64 maximum; None means the client's clock now.

    Raises:
        TypeError: timestamp is not an integer (a float, a datetime...) or is a bool.
        InvalidArgumentError: timestamp is negative or above int64.
    """
    if timestamp is None:
        return time.time_ns() // 1_000_000
    n = _integer(timestamp, field)
    if not 0 <= n <= INT64_MAX:
        raise invalid(field, f"is {n}; it must be >= 0 and within int64")
    return n


def param_value(value: object, field: str = "value") -> str:
    """Returns a param value as a str: a str as it is, anything else (numbers, bools,
    Decimals, numpy scalars, lists...) as `str(value)`, as MLflow does. None is refused
    (a param has a value).

    Raises:
        TypeError: value is None.
        InvalidArgumentError: the text is longer than 6,000 characters, or holds the NUL
            character or a lone surrogate.
    """
    return _text_value(value, field, PARAM_VALUE_MAX, "param")


# The literals the server takes for a typed param (Param.type): an INT's decimal, a
# DOUBLE's decimal or exponent literal, nan or an infinity.
_INT_LITERAL: Final = re.compile(r"[+-]?[0-9]+")
_DOUBLE_LITERAL: Final = re.compile(
    r"[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)",
    re.IGNORECASE,
)


def param_type(value: object, text: str) -> run_pb2.ParamType.ValueType:
    """The ParamType of a param value, from its Python type: a bool (numpy's too) is BOOL,
    an integer (int, numpy integers: `numbers.Integral`) within int64 is INT, another real
    number (float, numpy floats) is DOUBLE, a str is STRING; anything else, or a number
    whose string form `text` is not a literal of its type (a Fraction's "1/3", an int
    beyond int64), is untyped (PARAM_TYPE_UNSPECIFIED), stored as its string form only."""
    if isinstance(value, bool) or _is_numpy_bool(value):
        return run_pb2.PARAM_TYPE_BOOL
    for kind, numeric in (
        (run_pb2.PARAM_TYPE_INT, numbers.Integral),
        (run_pb2.PARAM_TYPE_DOUBLE, numbers.Real),
    ):
        if isinstance(value, numeric):
            return kind if _is_literal(text, kind) else run_pb2.PARAM_TYPE_UNSPECIFIED
    if isinstance(value, str):
        return run_pb2.PARAM_TYPE_STRING
    return run_pb2.PARAM_TYPE_UNSPECIFIED


def param_literal(text: str, kind: int, field: str = "value") -> str:
    """Returns a param's text if it is a literal of its ParamType number `kind` (the
    server's rule for a param given a type): an INT a decimal within int64, a DOUBLE a
    decimal or exponent literal, nan or an infinity, a BOOL true or false in any letter
    case; any text for STRING or untyped.

    Raises:
        InvalidArgumentError: the text is not a literal of its type.
    """
    if not _is_literal(text, kind):
        raise invalid(field, f"{_shorten(text)!r} is not {_LITERAL_OF[kind]}")
    return text


# What a literal of each type is, for a message.
_LITERAL_OF: Final[dict[int, str]] = {
    run_pb2.PARAM_TYPE_INT: "an INT literal within int64",
    run_pb2.PARAM_TYPE_DOUBLE: "a DOUBLE literal (such as 0.001, 1e-05, nan, inf)",
    run_pb2.PARAM_TYPE_BOOL: "a BOOL literal (true or false)",
}


def _is_literal(text: str, kind: int) -> bool:
    """Whether `text` is a literal of the ParamType number `kind` (any text is a STRING's
    or an untyped param's)."""
    if kind == run_pb2.PARAM_TYPE_INT:
        return bool(_INT_LITERAL.fullmatch(text)) and INT64_MIN <= int(text) <= INT64_MAX
    if kind == run_pb2.PARAM_TYPE_DOUBLE:
        return bool(_DOUBLE_LITERAL.fullmatch(text))
    if kind == run_pb2.PARAM_TYPE_BOOL:
        return text.lower() in ("true", "false")
    return True


def _is_numpy_bool(value: object) -> bool:
    # numpy.bool_ is neither a bool nor a number; checked by name, numpy not imported.
    cls = type(value)
    return cls.__module__ == "numpy" and cls.__name__ in ("bool_", "bool")


def typed_param_value(
    value: object, field: str = "value"
) -> tuple[str, run_pb2.ParamType.ValueType]:
    """A param value's string form (as param_value(): MLflow's `str(value)`, True as
    "True", 0.001 as "0.001") and its ParamType (as param_type()).

    Raises:
        TypeError: value is None.
        InvalidArgumentError: the text breaks a rule of param_value().
    """
    text = param_value(value, field)
    return text, param_type(value, text)


def tag_value(value: object, field: str = "value", limit: int = TAG_VALUE_MAX) -> str:
    """Returns a tag value as a str, by the rules of param_value() but with `limit`
    characters at most: 8,000 for a run's (or a logged model's) tag, the default;
    pass EXPERIMENT_TAG_VALUE_MAX (5,000) for an experiment's tag.

    Raises:
        TypeError: value is None.
        InvalidArgumentError: the text is longer than `limit`, or holds the NUL character
            or a lone surrogate.
    """
    return _text_value(value, field, limit, "tag")


def _text_value(value: object, field: str, limit: int, what: str) -> str:
    if value is None:
        raise TypeError(f"{what} {field} must not be None")
    text = value if type(value) is str else str(value)
    _check_text(text, field, limit)
    return text


def _check_text(text: str, field: str, limit: int) -> None:
    # The server's order (validation.Violations.text).
    if "\x00" in text:
        raise invalid(field, "must not contain the NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise invalid(field, "must be valid UTF-8 (it holds a lone surrogate)") from None
    if len(text) > limit:
        raise invalid(field, f"is {len(text)} characters long; the limit is {limit}")


def _integer(value: object, field: str) -> int:
    if isinstance(value, bool):
        raise TypeError(f"{field} must be an integer, not bool")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        shown = "None" if value is None else type(value).__name__
        raise TypeError(f"{field} must be an integer, not {shown}") from None


def _shorten(value: str, n: int = 60) -> str:
    return value if len(value) <= n else value[:n] + "..."


__all__ = [
    "EXPERIMENT_TAG_VALUE_MAX",
    "INT64_MAX",
    "INT64_MIN",
    "KEY_MAX",
    "PARAM_VALUE_MAX",
    "TAG_VALUE_MAX",
    "check_key",
    "invalid",
    "metric_value",
    "param_literal",
    "param_type",
    "param_value",
    "step_value",
    "tag_value",
    "timestamp_value",
    "typed_param_value",
]
