"""Opaque page tokens: a keyset position bound to the query that produced it."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import uuid
from collections.abc import Sequence
from typing import Any

from trackd.server.errors import InvalidArgument


def query_fingerprint(*parts: object) -> str:
    """A short digest of the parameters a token is valid for."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def encode(position: list[Any], fingerprint: str) -> str:
    """Makes a token holding a keyset position for the query named by `fingerprint`."""
    blob = json.dumps({"q": fingerprint, "p": position}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(blob).decode().rstrip("=")


def decode(token: str, fingerprint: str, field: str = "page_token") -> list[Any] | None:
    """Returns the position in `token` (None for an empty token). A malformed token, or
    one issued for other query parameters, is INVALID_ARGUMENT."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        position = data["p"]
        issued_for = data["q"]
    except (ValueError, KeyError, TypeError, UnicodeEncodeError) as exc:
        raise InvalidArgument.for_field(field, "is not a token this server issued") from exc
    if issued_for != fingerprint or not isinstance(position, list):
        raise InvalidArgument.for_field(
            field, "was issued for another query; pass the same parameters as the first page"
        )
    return position


def encode_position(values: Sequence[Any]) -> list[Any]:
    """Sort-key values as JSON-safe tagged pairs (floats by their bits, so NaN and -0.0
    survive)."""
    out: list[Any] = []
    for v in values:
        if v is None:
            out.append(["n"])
        elif isinstance(v, bool):
            out.append(["i", int(v)])
        elif isinstance(v, float):
            out.append(["f", struct.unpack("<q", struct.pack("<d", v))[0]])
        elif isinstance(v, int):
            out.append(["i", v])
        elif isinstance(v, uuid.UUID):
            out.append(["u", v.hex])
        else:
            out.append(["s", str(v)])
    return out


def decode_position(position: list[Any]) -> list[Any]:
    """The inverse of encode_position; InvalidArgument for anything else."""
    values: list[Any] = []
    try:
        for item in position:
            tag = item[0]
            if tag == "n":
                values.append(None)
            elif tag == "f":
                values.append(struct.unpack("<d", struct.pack("<q", int(item[1])))[0])
            elif tag == "i":
                values.append(int(item[1]))
            elif tag == "u":
                values.append(uuid.UUID(hex=str(item[1])))
            elif tag == "s":
                values.append(str(item[1]))
            else:
                raise ValueError(tag)
    except (ValueError, TypeError, IndexError, struct.error) as exc:
        raise InvalidArgument.for_field("page_token", "is not a token this server issued") from exc
    return values
