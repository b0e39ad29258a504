"""Structured logging: one JSON object per line (or key=value text), every record carrying
the request id of the call it was written in."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
import time
from collections.abc import Callable

from trackd.server.service import guard
from trackd.server.service.guard import RequestIdFilter

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None)))
_STANDARD |= {"message", "asctime", "request_id", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, object]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class JsonFormatter(logging.Formatter):
    """{"ts": ..., "level": ..., "logger": ..., "request_id": ..., "msg": ..., extras}."""

    _second = -1
    _prefix = ""

    def _timestamp(self, record: logging.LogRecord) -> str:
        return self._stamp(record.created)

    def _stamp(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # strftime once a second, not once a record
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "msg": record.getMessage(),
        }
        out.update(_extras(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """`time level logger [request_id] message key=value ...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={v}" for k, v in extras.items())
        return line


class BufferedStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to stderr through a buffer: a record at WARNING or above is flushed at once,
    others at most 0.2 s later (a write system call per access-log line would cost more
    than the line). A daemon thread flushes what a quiet server leaves behind."""

    FLUSH_EVERY = 0.2

    def __init__(self) -> None:
        stream = io.TextIOWrapper(
            io.BufferedWriter(io.FileIO(sys.stderr.fileno(), "w", closefd=False), 1 << 16),
            encoding="utf-8",
            errors="backslashreplace",
            line_buffering=False,
        )
        super().__init__(stream)
        self._flushed = time.monotonic()
        self.wall_flushed = time.time()
        threading.Thread(target=self._flusher, name="trackd-log-flush", daemon=True).start()

    def flush(self) -> None:
        self._flushed = time.monotonic()
        self.wall_flushed = time.time()
        super().flush()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = self.format(record)
            with self.lock:  # type: ignore[union-attr]
                self.stream.write(msg + self.terminator)
                if (
                    record.levelno >= logging.WARNING
                    or time.monotonic() - self._flushed > self.FLUSH_EVERY
                ):
                    self.flush()
        except Exception:  # noqa: BLE001 - logging must never break a call
            self.handleError(record)

    def _flusher(self) -> None:
        while True:
            time.sleep(self.FLUSH_EVERY)
            with self.lock:  # type: ignore[union-attr]
                self.flush()


def _access_sink(handler: BufferedStderrHandler) -> Callable[[str, str, str, float, str], None]:
    """A writer of INFO access-log lines in JsonFormatter's shape, without building a
    LogRecord (the access log is written once per call, on the hot path)."""
    formatter = JsonFormatter()
    dumps = json.dumps

    def write(rid: str, method: str, code: str, seconds: float, client: str) -> None:
        now = time.time()
        ms = seconds * 1000
        line = dumps(
            {
                "ts": formatter._stamp(now),
                "level": "INFO",
                "logger": "trackd.access",
                "request_id": rid,
                "msg": f"{method} {code} {ms:.2f}ms",
                "method": method,
                "code": code,
                "duration_ms": round(ms, 3),
                "client": client,
            },
            separators=(",", ":"),
        )
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(line + "\n")
            if now - handler.wall_flushed > handler.FLUSH_EVERY:
                handler.flush()

    return write


def _audit_sink(handler: BufferedStderrHandler) -> Callable[[str, str, str, str, str], None]:
    """A writer of INFO audit lines (logger "trackd.audit") in JsonFormatter's shape,
    without building a LogRecord (one is written per audited call, on the hot path): the
    line is put together from its values, each escaped as json.dumps escapes it."""
    formatter = JsonFormatter()
    esc: Callable[[str], str] = json.encoder.encode_basestring_ascii
    current_request_id = guard.request_id.get

    def write(principal: str, method: str, resource: str, outcome: str, rid: str) -> None:
        now = time.time()
        p, m, r, o = esc(principal), esc(method), esc(resource), esc(outcome)
        line = (
            f'{{"ts":"{formatter._stamp(now)}","level":"INFO","logger":"trackd.audit",'
            f'"request_id":{esc(current_request_id())},'
            f'"msg":{esc(f"{principal} {method} {resource} {outcome}")},'
            f'"principal":{p},"method":{m},"resource":{r},"outcome":{o},'
            f'"audit_request_id":{esc(rid)}}}\n'
        )
        with handler.lock:  # type: ignore[union-attr]
            handler.stream.write(line)
            if now - handler.wall_flushed > handler.FLUSH_EVERY:
                handler.flush()

    return write


# Set by configure() when logs go out as JSON lines: writes one audit line (principal,
# method, resource, outcome, request_id) straight to the log stream.
audit_sink: Callable[[str, str, str, str, str], None] | None = None


def configure(level: str, fmt: str) -> None:
    """Sends trackd's logs to stderr in `fmt` at `level`: "json", "text", or "auto" (text
    when stderr is a terminal, JSON otherwise)."""
    if fmt == "auto":
        fmt = "text" if sys.stderr.isatty() else "json"
    handler = BufferedStderrHandler()
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    guard.access_sink = _access_sink(handler) if fmt == "json" else None
    global audit_sink
    audit_sink = _audit_sink(handler) if fmt == "json" else None


def flush() -> None:
    """Writes out what the root logger's handlers buffer (before printing to stderr)."""
    for handler in logging.getLogger().handlers:
        handler.flush()
