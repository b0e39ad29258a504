"""Prometheus metrics: calls by method and status, their latency, ingest throughput, the
writers' queue, the connection pool, and streams open. Served over HTTP when
`--metrics-listen` is set."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    """trackd's metrics in their own registry (so that several servers in one process, as
    in the tests, do not collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "trackd_requests", "Calls by method and gRPC status.", ["method", "code"], registry=r
        )
        self.latency = Histogram(
            "trackd_request_duration_seconds",
            "Call duration by method (for streams, the whole stream).",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.points = Counter(
            "trackd_ingest_points", "Metric points committed by the writers.", registry=r
        )
        self.groups = Counter("trackd_ingest_groups", "Group commits by the writers.", registry=r)
        self.compacted = Counter(
            "trackd_compacted_points", "Metric points compacted into blocks.", registry=r
        )
        self.queued = Gauge(
            "trackd_ingest_queued_points", "Points queued for the writers.", registry=r
        )
        self.pool_size = Gauge("trackd_pool_connections", "Connections in the pool.", registry=r)
        self.pool_idle = Gauge("trackd_pool_idle_connections", "Idle pool connections.", registry=r)
        self.streams = Gauge("trackd_streams_open", "StreamMetrics calls open.", registry=r)
        self.lagging_reads = Gauge(
            "trackd_lagging_reads",
            "Reads that tolerate lag, by where they ran (replica, or primary when the replica "
            "was behind the caller, failed or is not configured), since the server started.",
            ["target"],
            registry=r,
        )

    def watch_replica(self, replica: Callable[[], float], primary: Callable[[], float]) -> None:
        """Reads the counts of lagging reads served by the replica and by the primary."""
        self.lagging_reads.labels("replica").set_function(replica)
        self.lagging_reads.labels("primary").set_function(primary)

    def observe(self, method: str, code: str, seconds: float) -> None:
        """Records one finished call."""
        self.requests.labels(method, code).inc()
        self.latency.labels(method).observe(seconds)

    def committed(self, points: int) -> None:
        """Records one group commit of `points` points."""
        self.groups.inc()
        self.points.inc(points)

    def watch(
        self,
        queued: Callable[[], float],
        pool_size: Callable[[], float],
        pool_idle: Callable[[], float],
        streams: Callable[[], float],
    ) -> None:
        """Reads the gauges from these functions at each scrape."""
        self.queued.set_function(queued)
        self.pool_size.set_function(pool_size)
        self.pool_idle.set_function(pool_idle)
        self.streams.set_function(streams)

    def serve(self, listen: str) -> int:
        """Serves /metrics on HOST:PORT (port 0 picks one); returns the port."""
        host, _, port = listen.rpartition(":")
        server, _thread = start_http_server(
            int(port), addr=host or "127.0.0.1", registry=self.registry
        )
        return int(server.server_port)
