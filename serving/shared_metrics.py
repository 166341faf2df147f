"""One ``/metrics`` for a server of several worker processes (``--workers N``).

Workers record into prometheus-client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, a
private directory of the server's run directory, which the supervisor creates empty and
deletes on exit); the supervisor serves ``/metrics`` from those files with
:class:`~prometheus_client.multiprocess.MultiProcessCollector`:

* counters and histograms are summed over the workers, the dead ones included, so a total
  stays equal to what the clients sent even across a worker restart;
* a model version no live worker holds any more (unloaded) is left out, as one process
  removes its series: the files cannot forget a series, so the supervisor asks the workers
  for their versions (``index`` over the control plane) at each scrape and drops the samples
  of the others (all are kept when a worker does not answer);
* every gauge has an explicit mode in serving/metrics.py: ``livesum`` for in-flight requests
  and queues summed, ``livemax`` for model states and runtime info, ``livemin`` for the last
  scan time (the stalest worker), and ``liveall`` for per-worker values, whose ``pid`` label
  becomes ``worker`` (the index, stable across restarts) here;
* prometheus-client's process, platform and GC collectors describe one process and do not
  aggregate; in their place the supervisor exports ``d2lserve_worker_cpu_seconds_total`` and
  ``d2lserve_worker_resident_memory_bytes`` per worker (read from /proc at scrape time), the
  number of workers, and ``d2lserve_worker_restarts_total``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
NAMESPACE = "d2lserve"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def multiprocess_enabled() -> bool:
    """Whether this process records into shared files (a worker of ``--workers N``)."""
    return bool(os.environ.get(MULTIPROC_ENV))


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def process_rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm", encoding="ascii") as file:
        return int(file.read().split()[1]) * _PAGE_BYTES


WorkerPids = Callable[[], dict[int, int]]  # pid -> worker index, of the live workers
# (model, version) pairs some live worker holds; None when that cannot be known right now.
HeldVersions = Callable[[], set[tuple[str, str]] | None]


class _WorkerFiles:
    """MultiProcessCollector: ``pid`` labels become ``worker`` indexes; unloaded versions go."""

    def __init__(self, path: Path, workers: WorkerPids, held: HeldVersions) -> None:
        self._files = MultiProcessCollector(None, path=str(path))
        self._workers = workers
        self._held = held

    def collect(self) -> Iterator[Metric]:
        held = self._held()
        workers = self._workers()
        for metric in self._files.collect():
            samples = []
            for sample in metric.samples:
                version = sample.labels.get("version")
                if (
                    held is not None
                    and version
                    and (sample.labels.get("model"), version) not in held
                ):
                    continue  # an unloaded version
                pid = sample.labels.get("pid")
                if pid is not None:
                    index = workers.get(int(pid))
                    if index is None:
                        continue  # a worker that has just died
                    labels = {k: v for k, v in sample.labels.items() if k != "pid"}
                    labels["worker"] = str(index)
                    sample = sample._replace(labels=labels)
                samples.append(sample)
            metric.samples = samples
            yield metric


class _WorkerProcesses:
    """CPU and memory of each live worker, read at scrape time."""

    def __init__(self, workers: WorkerPids) -> None:
        self._workers = workers

    def collect(self) -> Iterator[Metric]:
        cpu = CounterMetricFamily(
            f"{NAMESPACE}_worker_cpu_seconds",
            "User and system CPU time of each live worker process.",
            labels=["worker"],
        )
        rss = GaugeMetricFamily(
            f"{NAMESPACE}_worker_resident_memory_bytes",
            "Resident memory of each live worker process.",
            labels=["worker"],
        )
        for pid, index in sorted(self._workers().items(), key=lambda item: item[1]):
            try:
                cpu.add_metric([str(index)], process_cpu_seconds(pid))
                rss.add_metric([str(index)], process_rss_bytes(pid))
            except OSError:
                continue  # exited between the listing and the read
        yield cpu
        yield rss


class SupervisorMetrics:
    """The supervisor's registry: the workers' shared files plus the supervisor's own."""

    def __init__(self, path: Path, workers: WorkerPids, held: HeldVersions, count: int) -> None:
        self.path = path
        self.registry = CollectorRegistry()
        self.registry.register(_WorkerFiles(path, workers, held))  # type: ignore[arg-type]
        self.registry.register(_WorkerProcesses(workers))  # type: ignore[arg-type]
        common: dict[str, Any] = {"namespace": NAMESPACE, "registry": self.registry}
        self.restarts = Counter(
            "worker_restarts", "Worker processes restarted after they died.", ["worker"], **common
        )
        Gauge("workers", "Worker processes the server runs.", **common).set(count)
        for index in range(count):
            self.restarts.labels(str(index))
        self._httpd: Any = None

    def worker_died(self, pid: int) -> None:
        """Drop the live gauges of a dead worker (its counters stay in the totals)."""
        mark_process_dead(pid, str(self.path))

    def start_http_server(self, host: str, port: int) -> int:
        self._httpd, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._httpd.server_port)

    def stop_http_server(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
