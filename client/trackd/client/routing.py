"""Several servers and read replicas: the channel target for a list of addresses, round-robin
load balancing with retries of idempotent calls, and read-your-writes across a server's read
replica.

Read-your-writes: a server with a read replica answers each call with `x-trackd-lsn`, the
position in the database's write-ahead log its writes (or reads) reflect. The client keeps
the highest one it has seen and sends it on every call; the server then reads from the
replica only once the replica has replayed that far, so a read never misses the client's
own earlier writes, and never shows an older state than an earlier read did.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import socket
from typing import TYPE_CHECKING, Any

import grpc

LSN_METADATA = "x-trackd-lsn"

# Calls gRPC may send again when a server is unavailable: they read, or set something to
# the value they carry. Writes that add (LogMetric, CreateRun, ...) are not retried here.
IDEMPOTENT_METHODS = {
    "trackd.v1.ExperimentService": [
        "GetExperiment",
        "GetExperimentByName",
        "SearchExperiments",
        "SearchDatasets",
        "SetExperimentTag",
        "DeleteExperimentTag",
        "GetExperimentPermissionLevels",
        "GetExperimentPermissions",
    ],
    "trackd.v1.RunService": [
        "GetRun",
        "UpdateRun",
        "SetTag",
        "DeleteTag",
        "GetMetricHistory",
        "SearchRuns",
        "ListChildRuns",
        "Heartbeat",
    ],
    "trackd.v1.LoggedModelService": ["GetLoggedModel", "SearchLoggedModels"],
    "trackd.v1.ArtifactService": ["ListArtifacts", "GetArtifact"],
}

SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": service, "method": method}
                    for service, methods in IDEMPOTENT_METHODS.items()
                    for method in methods
                ],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.05s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)


def channel_options() -> list[tuple[str, Any]]:
    """Channel options spreading calls over every address of the target (round robin) and
    retrying idempotent calls on UNAVAILABLE (on another server, once one has died)."""
    return [
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.enable_retries", 1),
    ]


def _split_host_port(address: str) -> tuple[str, str]:
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = address.rpartition(":")
    return host, port


def _ip_addresses(host: str) -> list[str]:
    try:
        return [str(ipaddress.ip_address(host))]
    except ValueError:
        pass
    found: list[str] = []
    for *_, sockaddr in socket.getaddrinfo(host, None, type=socket.SOCK_STREAM):
        ip = str(sockaddr[0])
        if ip not in found:
            found.append(ip)
    return found


def channel_target(target: str) -> str:
    """The gRPC target for `target`: "host:port" and gRPC's own targets (dns:///name:port,
    ipv4:..., unix:...) as they are; a comma-separated list "host1:port1,host2:port2" as an
    ipv4: or ipv6: address list (a host name is resolved now, to all its addresses)."""
    if "," not in target or "://" in target or target.startswith(("ipv4:", "ipv6:", "unix:")):
        return target
    v4: list[str] = []
    v6: list[str] = []
    for address in filter(None, (a.strip() for a in target.split(","))):
        host, port = _split_host_port(address)
        for ip in _ip_addresses(host):
            if ":" in ip:
                v6.append(f"[{ip}]:{port}")
            else:
                v4.append(f"{ip}:{port}")
    if v4 and v6:
        raise ValueError(f"{target!r} mixes IPv4 and IPv6 addresses; list one family")
    return f"ipv6:{','.join(v6)}" if v6 else f"ipv4:{','.join(v4)}"


class LsnTracker:
    """The highest WAL position a client has seen from its servers (0: none)."""

    def __init__(self) -> None:
        self.lsn = 0

    def note(self, metadata: Any) -> None:
        for key, value in metadata or ():
            if key == LSN_METADATA and isinstance(value, str):
                try:
                    hi, _, lo = value.partition("/")
                    self.lsn = max(self.lsn, (int(hi, 16) << 32) | int(lo, 16))
                except ValueError:
                    continue

    def details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        if not self.lsn:
            return details
        pair = (LSN_METADATA, f"{self.lsn >> 32:X}/{self.lsn & 0xFFFFFFFF:X}")
        metadata = grpc.aio.Metadata(*(details.metadata or ()), pair)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )

    def noted_when_done(self, call: Any) -> None:
        """Notes the trailing metadata of a streaming call once it ends."""

        async def note() -> None:
            try:
                self.note(await call.trailing_metadata())
            except (grpc.aio.AioRpcError, asyncio.CancelledError):
                pass

        call.add_done_callback(lambda _: asyncio.ensure_future(note()))

    def interceptors(self) -> list[Any]:
        return [_UnaryUnary(self), _UnaryStream(self), _StreamUnary(self), _StreamStream(self)]


if TYPE_CHECKING:  # generic in grpc-stubs, not at run time
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    _UnaryUnaryBase = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStreamBase = grpc.aio.UnaryStreamClientInterceptor
    _StreamUnaryBase = grpc.aio.StreamUnaryClientInterceptor
    _StreamStreamBase = grpc.aio.StreamStreamClientInterceptor


class _Tracking:
    def __init__(self, tracker: LsnTracker) -> None:
        self.tracker = tracker


class _UnaryUnary(_Tracking, _UnaryUnaryBase):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(self.tracker.details(details), request)
        try:
            await call
        except grpc.aio.AioRpcError:
            return call  # the caller's await raises it
        self.tracker.note(await call.trailing_metadata())
        return call


class _UnaryStream(_Tracking, _UnaryStreamBase):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(self.tracker.details(details), request)
        self.tracker.noted_when_done(call)
        return call


class _StreamUnary(_Tracking, _StreamUnaryBase):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self.tracker.details(details), requests)


class _StreamStream(_Tracking, _StreamStreamBase):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self.tracker.details(details), requests)


__all__ = ["LSN_METADATA", "LsnTracker", "channel_options", "channel_target"]
