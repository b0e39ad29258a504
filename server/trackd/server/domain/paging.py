"""Opaque page tokens: a keyset position bound to the query that produced it, and pages
that can be cut short after any of their items (the service layer cuts pages by encoded
size)."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, TypeVar

import asyncpg

from trackd.server.errors import InvalidArgument
from trackd.server.store.pool import Connection, Database

V = TypeVar("V")


class Page(list[V]):
    """The results of one page, which also knows the token that resumes right after each
    of them: a caller may return only the first k results with `resume_after(k - 1)` as
    the next page's token, and the following page starts at result k. Keyset tokens make
    such a short page as valid as a full one."""

    def __init__(self, items: Iterable[V], resume: Callable[[int], str]) -> None:
        super().__init__(items)
        self._resume = resume

    def resume_after(self, index: int) -> str:
        """The token of the page that starts right after result `index`."""
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self._resume(index)


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


async def keyset_page(
    db: Database,
    page_token: str,
    fingerprint: str,
    size: int,
    fetch: Callable[
        [Connection, list[Any] | None, int], Awaitable[tuple[list[asyncpg.Record], int]]
    ],
    load: Callable[[Connection, list[asyncpg.Record]], Awaitable[list[V]]],
    *,
    lagging: bool = False,
) -> tuple[Page[V], str]:
    """One page of a keyset-paginated search, in one read-only snapshot (of the read
    replica, if there is one and the caller's writes are on it, when `lagging`).

    `fetch(conn, after, limit)` returns rows in sort order strictly after the position
    `after` (None for the first page) with their sort keys as columns sk0, sk1, ..., and
    how many there are; `load(conn, rows)` turns the page's rows into results, one per
    row and in order. Returns the results (a Page, which can also resume after any of
    them) and the next page's token ('' on the last page). A malformed or foreign token is
    INVALID_ARGUMENT on page_token."""
    position = decode(page_token, fingerprint)
    after = decode_position(position) if position is not None else None

    async def work(conn: Connection) -> tuple[list[V], list[asyncpg.Record], int]:
        try:
            rows, n_sort = await fetch(conn, after, size + 1)
        except (ValueError, asyncpg.DataError) as exc:
            raise InvalidArgument.for_field(
                "page_token", "is not a token this server issued"
            ) from exc
        return await load(conn, rows[:size]), rows, n_sort

    read = db.read_lagging if lagging else db.read
    results, rows, n_sort = await read(work)

    def resume(index: int) -> str:
        # Read from the row only when a token is asked for (once a page, mostly).
        row = rows[index]
        return encode(encode_position([row[f"sk{i}"] for i in range(n_sort)]), fingerprint)

    token = resume(size - 1) if len(rows) > size else ""
    return Page(results, resume), token
