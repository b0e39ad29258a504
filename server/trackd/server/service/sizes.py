"""The message-size promise: no response message, and no message of a response stream, is
larger than MESSAGE_BYTES_MAX encoded, whatever the data, so that a gRPC client with its
default receive limit (4 MiB) reads every answer.

Pages are cut by encoded size as well as by count (a keyset token resumes after any item,
see domain.paging.Page), history chunks are split, and a single item that cannot fit is
ResponseTooLarge. `encode` is the last check every response passes (service/rpc.py).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Sequence
from typing import Any

from google.protobuf.message import Message

from trackd.server.domain import paging
from trackd.server.errors import InvalidArgument, ResponseTooLarge

# What gRPC clients accept by default (grpc-core, grpc-java, grpc-go, @grpc/grpc-js).
CLIENT_DEFAULT_BYTES = 4 * 1024 * 1024
# The largest response message trackd sends; below the default with room to spare.
MESSAGE_BYTES_MAX = 4_000_000

_TOKEN = "next_page_token"
# Ids are short; a longer one is cut in an error's text.
_ID_CHARS_MAX = 64
# Worst-case encoded bytes of one point of packed history columns: a negative step is a
# 10-byte varint, a timestamp up to INT64_MAX a 9-byte one (10 to be safe), a double 8.
_POINT_BYTES_MAX = 28
# The three packed fields' tags and length prefixes (1 + at most 4 bytes each).
_COLUMNS_OVERHEAD_MAX = 15


def varint_size(value: int) -> int:
    """Bytes of `value` as a protobuf varint (a negative int64 takes 10)."""
    if value < 0:
        return 10
    return max(1, (value.bit_length() + 6) // 7)


def entry_size(field_number: int, payload: int) -> int:
    """Bytes of one length-delimited entry (tag, length, payload) of a field."""
    return varint_size(field_number << 3) + varint_size(payload) + payload


def _limit_text(size: int) -> str:
    return (
        f"{size:,} bytes encoded, more than the {MESSAGE_BYTES_MAX:,} a trackd response may "
        f"hold (gRPC clients accept {CLIENT_DEFAULT_BYTES:,} by default)"
    )


def _identity(message: Message) -> tuple[str, str]:
    """The first non-empty `*_id` string field in a depth-first walk of `message`, as
    (name, value), to name what was too large; ('', '') if there is none."""
    for field, value in message.ListFields():
        if field.type == field.TYPE_STRING and field.name.endswith("_id") and value:
            return field.name, str(value)[:_ID_CHARS_MAX]
    for field, value in message.ListFields():
        if field.type == field.TYPE_MESSAGE and not field.is_repeated:
            found = _identity(value)
            if found[0]:
                return found
    return "", ""


def too_large(item: Message, size: int, where: str) -> ResponseTooLarge:
    """The error for an item (a run, an experiment, a model) or a response that cannot be
    sent: names the item by its id, its size and the limit."""
    kind = item.DESCRIPTOR.name
    id_name, id_value = _identity(item)
    named = f"{kind} {id_value}" if id_value else kind
    metadata = {"size": str(size), "limit": str(MESSAGE_BYTES_MAX), "message": kind}
    if id_name:
        metadata[id_name] = id_value
    return ResponseTooLarge(
        f"{where}: {named} is {_limit_text(size)}; it cannot be sent as one message "
        "(the call's writes, if any, are committed)",
        metadata,
    )


# A page fit_page() encoded whole to measure it, kept for encode() so that the page is not
# serialized twice (the servicer returns it unchanged right after). Per call: each call
# runs in its own task, hence its own context.
_measured: contextvars.ContextVar[tuple[Message, bytes] | None] = contextvars.ContextVar(
    "measured", default=None
)


def encode(method: str, response: Message | bytes) -> bytes:
    """The encoded response, or ResponseTooLarge if it exceeds MESSAGE_BYTES_MAX (naming
    the resource a response of one resource carries, such as GetRun's run). A servicer may
    hand over a message it encoded itself (bytes), which is only checked for size."""
    if isinstance(response, bytes):
        if len(response) > MESSAGE_BYTES_MAX:
            raise ResponseTooLarge(
                f"{method}: an answer of {len(response)} bytes is over the "
                f"{MESSAGE_BYTES_MAX} a response may be"
            )
        return response
    measured = _measured.get()
    if measured is not None:
        _measured.set(None)
        if measured[0] is response:
            return measured[1]
    data = response.SerializeToString()
    if len(data) > MESSAGE_BYTES_MAX:
        fields = response.ListFields()
        only = fields[0] if len(fields) == 1 else None
        item = (
            only[1]
            if only and only[0].type == only[0].TYPE_MESSAGE and not only[0].is_repeated
            else response
        )
        raise too_large(item, len(data), method)
    return data


# What a created resource's answer adds to the request's own fields: ids, times, status, a
# generated name, the artifact URI (up to 2000 characters of location, 4 bytes each) and
# the nesting of messages.
CREATED_OVERHEAD_MAX = 16_384


def check_created(request: Message, field: str, what: str) -> None:
    """Refuses, before anything is written, a create request whose answer (the request's
    fields plus at most CREATED_OVERHEAD_MAX bytes) could exceed MESSAGE_BYTES_MAX: the
    resource would be created but could not be returned. Raises InvalidArgument on
    `field`, saying that `what` are too large together."""
    size = request.ByteSize()
    if size + CREATED_OVERHEAD_MAX > MESSAGE_BYTES_MAX:
        raise InvalidArgument.for_field(
            field,
            f"the request is {size:,} bytes encoded: with {what} this large, the answer "
            f"could exceed the {MESSAGE_BYTES_MAX:,} bytes a response may hold; send some "
            "of them in a second call",
        )


def fit_page(response: Message, field: str, page: Sequence[object], method: str) -> None:
    """Cuts a page response in place so that it encodes to at most MESSAGE_BYTES_MAX.

    `response` holds the page's items in the repeated message field `field` and its
    `next_page_token`; `page` is the domain's paging.Page the items were converted from,
    one for one. When the whole page does not fit, the items are kept up to the last one
    that fits together with the token resuming after it, which replaces next_page_token
    (the next page starts with the first item dropped). Raises ResponseTooLarge when the
    first item alone cannot fit. The response must not change after this call (its
    encoding is kept for encode())."""
    data = response.SerializeToString()
    total = len(data)
    if total <= MESSAGE_BYTES_MAX:
        _measured.set((response, data))
        return
    if not isinstance(page, paging.Page):
        raise TypeError(f"{method}: a page to cut must be a paging.Page")
    items: Any = getattr(response, field)
    number = response.DESCRIPTOR.fields_by_name[field].number
    token_number = response.DESCRIPTOR.fields_by_name[_TOKEN].number
    sizes = [entry_size(number, item.ByteSize()) for item in items]

    def token_size(token: str) -> int:
        return entry_size(token_number, len(token.encode())) if token else 0

    rest = total - sum(sizes) - token_size(getattr(response, _TOKEN))
    kept, used = 0, rest
    while kept < len(sizes) and used + sizes[kept] <= MESSAGE_BYTES_MAX:
        used += sizes[kept]
        kept += 1
    while kept > 0:
        token = page.resume_after(kept - 1)
        if used + token_size(token) <= MESSAGE_BYTES_MAX:
            del items[kept:]
            setattr(response, _TOKEN, token)
            return
        kept -= 1
        used -= sizes[kept]
    raise too_large(items[0], items[0].ByteSize(), method)


def split_columns(
    steps: list[int], stamps: list[int], values: list[float]
) -> Iterator[tuple[list[int], list[int], list[float]]]:
    """History columns as consecutive slices whose packed encoding (three packed fields)
    stays within MESSAGE_BYTES_MAX; one slice, unchanged, when the whole fits."""
    n = len(steps)
    if n * _POINT_BYTES_MAX + _COLUMNS_OVERHEAD_MAX <= MESSAGE_BYTES_MAX:
        yield steps, stamps, values
        return
    budget = MESSAGE_BYTES_MAX - _COLUMNS_OVERHEAD_MAX
    start, used = 0, 0
    for i in range(n):
        point = varint_size(steps[i]) + varint_size(stamps[i]) + 8
        if used + point > budget:
            yield steps[start:i], stamps[start:i], values[start:i]
            start, used = i, 0
        used += point
    if start < n:
        yield steps[start:], stamps[start:], values[start:]
