"""System metrics of the machine a run trains on, sampled in a background thread and
logged through the run's logger as `system/...` series under MLflow's names: CPU,
memory, disk and network with psutil (`pip install 'trackd[system]'`), and each GPU's
utilisation, memory and power with NVIDIA's NVML binding (`nvidia-ml-py`) when it is
installed and finds a driver."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
from collections.abc import Callable, Mapping
from typing import Any

from trackd.client.errors import TrackdError

log = logging.getLogger(__name__)

# Seconds between two samples (MLflow's default sampling interval).
DEFAULT_SYSTEM_METRICS_INTERVAL = 10.0
PREFIX = "system/"
_MB = 1e6

# put_many(run_id, metrics, step, timestamp) of a logger.
PutMany = Callable[[str, Mapping[str, object], object, object], None]


def import_psutil() -> Any:
    """The psutil module.

    Raises:
        ImportError: psutil is not installed (the message says how to install it).
    """
    try:
        return importlib.import_module("psutil")
    except ImportError as err:
        raise ImportError(
            "log_system_metrics=True needs psutil: pip install 'trackd[system]'"
        ) from err


def _nvml() -> Any:
    """NVML, initialised, if nvidia-ml-py is installed and finds a driver; else None."""
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as err:  # noqa: BLE001 - no driver, no GPU: no GPU metrics
        log.debug("NVML is installed but did not start (%s): no GPU metrics", err)
        return None
    return pynvml


class SystemSampler:
    """One sample of the machine's metrics at a time, under MLflow's names (without the
    `system/` prefix): cpu_utilization_percentage, system_memory_usage_megabytes and
    _percentage, disk_usage_percentage, disk_usage_megabytes, disk_available_megabytes
    (of the root file system), disk_read_megabytes and disk_write_megabytes (since the
    sampler began; trackd's addition), network_receive_megabytes and
    network_transmit_megabytes (since the sampler began), and per GPU i with NVML
    gpu_{i}_utilization_percentage, gpu_{i}_memory_usage_megabytes and _percentage,
    gpu_{i}_power_usage_watts and _percentage.

    Raises:
        ImportError: psutil is not installed.
    """

    def __init__(self) -> None:
        self._psutil = import_psutil()
        ps = self._psutil
        # The first cpu_percent() call measures nothing; later calls measure since the
        # previous one.
        ps.cpu_percent(None)
        net = ps.net_io_counters()
        self._net0 = (net.bytes_recv, net.bytes_sent) if net is not None else None
        disk = ps.disk_io_counters()
        self._disk0 = (disk.read_bytes, disk.write_bytes) if disk is not None else None
        self._nvml = _nvml()
        self._gpus: list[Any] = []
        if self._nvml is not None:
            try:
                count = self._nvml.nvmlDeviceGetCount()
                self._gpus = [self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            except Exception as err:  # noqa: BLE001
                log.debug("NVML lists no GPU (%s)", err)

    def sample(self) -> dict[str, float]:
        """The metrics now (a metric psutil or NVML cannot read here is left out)."""
        ps = self._psutil
        out: dict[str, float] = {"cpu_utilization_percentage": float(ps.cpu_percent(None))}
        mem = ps.virtual_memory()
        out["system_memory_usage_megabytes"] = mem.used / _MB
        out["system_memory_usage_percentage"] = mem.used / mem.total * 100
        try:
            usage = ps.disk_usage(os.sep)
            out["disk_usage_percentage"] = float(usage.percent)
            out["disk_usage_megabytes"] = usage.used / _MB
            out["disk_available_megabytes"] = usage.free / _MB
        except OSError:
            pass
        disk = ps.disk_io_counters() if self._disk0 is not None else None
        if disk is not None and self._disk0 is not None:
            out["disk_read_megabytes"] = (disk.read_bytes - self._disk0[0]) / _MB
            out["disk_write_megabytes"] = (disk.write_bytes - self._disk0[1]) / _MB
        net = ps.net_io_counters() if self._net0 is not None else None
        if net is not None and self._net0 is not None:
            out["network_receive_megabytes"] = (net.bytes_recv - self._net0[0]) / _MB
            out["network_transmit_megabytes"] = (net.bytes_sent - self._net0[1]) / _MB
        for i, handle in enumerate(self._gpus):
            out.update(self._gpu(i, handle))
        return out

    def _gpu(self, i: int, handle: Any) -> dict[str, float]:
        nv = self._nvml
        out: dict[str, float] = {}
        try:
            memory = nv.nvmlDeviceGetMemoryInfo(handle)
            out[f"gpu_{i}_memory_usage_megabytes"] = memory.used / _MB
            out[f"gpu_{i}_memory_usage_percentage"] = memory.used / memory.total * 100
        except Exception as err:  # noqa: BLE001 - a GPU that cannot tell: left out
            log.debug("GPU %d memory: %s", i, err)
        try:
            out[f"gpu_{i}_utilization_percentage"] = float(
                nv.nvmlDeviceGetUtilizationRates(handle).gpu
            )
        except Exception as err:  # noqa: BLE001
            log.debug("GPU %d utilization: %s", i, err)
        try:
            milliwatts = nv.nvmlDeviceGetPowerUsage(handle)
            limit = nv.nvmlDeviceGetEnforcedPowerLimit(handle)
            out[f"gpu_{i}_power_usage_watts"] = milliwatts / 1000
            out[f"gpu_{i}_power_usage_percentage"] = milliwatts / limit * 100
        except Exception as err:  # noqa: BLE001
            log.debug("GPU %d power: %s", i, err)
        return out

    def close(self) -> None:
        """Releases NVML."""
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as err:  # noqa: BLE001
                log.debug("NVML shutdown: %s", err)
            self._nvml = None
            self._gpus = []


class SystemMetricsMonitor:
    """Samples the machine every `interval` seconds in a daemon thread and puts the
    samples, as `system/<name>` points at steps 0, 1, 2, ..., into a run's logger
    (`put_many`, the same buffered path as the run's own metrics). The training loop's
    thread does none of this work; a full buffer makes the monitor skip samples rather
    than wait when the logger raises, and the monitor stops at `stop()` (the run's end)
    or when the logger is closed.

    Args:
        put_many: the logger's put_many (thread-safe).
        run_id: the run the samples belong to.
        interval: seconds between samples.
        first_step: the step of the first sample (a resumed run goes on after its last).

    Raises:
        ImportError: psutil is not installed.
        ValueError: interval is not positive.
    """

    def __init__(
        self,
        put_many: PutMany,
        run_id: str,
        interval: float = DEFAULT_SYSTEM_METRICS_INTERVAL,
        first_step: int = 0,
    ) -> None:
        if not interval > 0:
            raise ValueError("system_metrics_interval must be positive")
        self._put_many = put_many
        self.run_id = run_id
        self.interval = interval
        self.step = first_step
        self._sampler = SystemSampler()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name=f"trackd-system-metrics-{run_id}", daemon=True
        )

    def start(self) -> SystemMetricsMonitor:
        """Starts sampling (the first sample after one interval); returns self."""
        self._thread.start()
        return self

    def stop(self, timeout: float | None = 10.0) -> None:
        """Stops sampling and waits up to `timeout` seconds for the thread to end. Call it
        from a thread other than the logger's event loop (use `stop_async` there)."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    async def stop_async(self, timeout: float | None = 10.0) -> None:  # noqa: ASYNC109
        """stop() without blocking the event loop (the thread may be waiting for room in
        the logger's buffer, which the loop frees)."""
        self._stop.set()
        await asyncio.to_thread(self._thread.join, timeout)

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                try:
                    sample = self._sampler.sample()
                except Exception as err:  # noqa: BLE001 - a failed sample is skipped
                    log.debug("system metrics sample failed: %s", err)
                    continue
                if self._stop.is_set():
                    return
                metrics = {PREFIX + k: v for k, v in sample.items()}
                try:
                    self._put_many(self.run_id, metrics, self.step, None)
                except TrackdError as err:
                    if err.reason == "BUFFER_FULL":
                        continue
                    # Closed logger or a stream failed for good: nothing more to log to.
                    log.debug("system metrics stop: %s", err)
                    return
                self.step += 1
        finally:
            self._sampler.close()


__all__ = [
    "DEFAULT_SYSTEM_METRICS_INTERVAL",
    "PREFIX",
    "SystemMetricsMonitor",
    "SystemSampler",
    "import_psutil",
]
