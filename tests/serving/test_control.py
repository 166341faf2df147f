"""The pieces of ``--workers N`` that need no server: statistics sums, cores, the port."""

from __future__ import annotations

import os
import socket

import pytest

from protos import grpc_service_pb2 as pb
from serving.control import clean_up_orphaned_run_dir, merge_statistics
from serving.errors import SettingsError
from serving.workers import STARTUP_SECONDS, _Worker, overdue, reserve_port, usable_cores


def statistics(success: int, batches: dict[int, int], last: int) -> pb.ModelStatistics:
    entry = pb.ModelStatistics(name="mlp", version="1", last_inference=last)
    entry.inference_count = success * 2
    entry.execution_count = sum(batches.values())
    entry.inference_stats.success.count = success
    entry.inference_stats.success.ns = success * 1000
    entry.inference_stats.queue.count = success
    for size, count in batches.items():
        batch = entry.batch_stats.add(batch_size=size)
        batch.compute_infer.count = count
        batch.compute_infer.ns = count * 10
    return entry


def test_merged_statistics_are_sums_with_batch_sizes_joined_in_order():
    mine = statistics(success=3, batches={1: 1, 4: 1}, last=200)
    merge_statistics(mine, statistics(success=5, batches={2: 2, 4: 1}, last=100))
    assert mine.inference_stats.success.count == 8 and mine.inference_stats.success.ns == 8000
    assert mine.inference_stats.queue.count == 8
    assert mine.inference_count == 16 and mine.execution_count == 5
    assert mine.last_inference == 200  # the latest of the workers
    assert [(b.batch_size, b.compute_infer.count) for b in mine.batch_stats] == [
        (1, 1),
        (2, 2),
        (4, 2),
    ]
    assert [b.compute_infer.ns for b in mine.batch_stats] == [10, 20, 20]


def test_usable_cores_are_within_the_affinity():
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


def test_the_reserved_port_is_shared_only_with_reuseport_sockets():
    with reserve_port("127.0.0.1", 0) as held:
        port = held.getsockname()[1]
        with socket.socket() as plain, pytest.raises(OSError):
            plain.bind(("127.0.0.1", port))
        with socket.socket() as worker:  # what gRPC does in each worker
            worker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            worker.bind(("127.0.0.1", port))
            worker.listen()
            # A second server is refused while the workers listen.
            with pytest.raises(SettingsError, match=f"cannot listen on 127.0.0.1:{port}"):
                reserve_port("127.0.0.1", port)


def orphaned_run_dir(tmp_path):
    run_dir = tmp_path / "d2lserve-test"
    metrics = run_dir / "metrics"
    metrics.mkdir(parents=True)
    (metrics / "counter_123.db").write_bytes(b"x")
    (metrics / "histogram_456.db").write_bytes(b"x")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(run_dir / "worker-1.sock"))  # bound, never listening: a killed worker's
    stale.close()
    return run_dir


def test_last_worker_out_removes_what_the_dead_supervisor_left(tmp_path):
    run_dir = orphaned_run_dir(tmp_path)
    clean_up_orphaned_run_dir(run_dir)
    assert not run_dir.exists()


def test_a_peer_still_listening_keeps_the_run_dir(tmp_path):
    run_dir = orphaned_run_dir(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as peer:
        peer.bind(str(run_dir / "worker-0.sock"))
        peer.listen()
        clean_up_orphaned_run_dir(run_dir)
        names = sorted(p.name for p in run_dir.rglob("*"))
    assert names == [
        "counter_123.db",
        "histogram_456.db",
        "metrics",
        "worker-0.sock",
        "worker-1.sock",
    ]


def test_clean_up_removes_only_the_servers_own_files(tmp_path):
    run_dir = orphaned_run_dir(tmp_path)
    (run_dir / "notes.txt").write_text("not ours")
    clean_up_orphaned_run_dir(run_dir)
    assert sorted(p.name for p in run_dir.rglob("*")) == ["notes.txt"]


def test_a_worker_silent_past_the_timeout_since_its_last_answer_is_overdue():
    worker = _Worker(0, started=0.0, answered=100.0)
    assert overdue(worker, now=102.9, timeout=3.0) is None
    assert overdue(worker, now=103.5, timeout=3.0) == pytest.approx(3.5)


def test_a_starting_worker_gets_the_startup_allowance_or_the_timeout_if_longer():
    starting = _Worker(0, started=10.0)  # never answered yet
    assert overdue(starting, now=10.0 + STARTUP_SECONDS - 1, timeout=3.0) is None
    assert overdue(starting, now=10.0 + STARTUP_SECONDS + 1, timeout=3.0) is not None
    assert overdue(starting, now=10.0 + STARTUP_SECONDS + 1, timeout=2 * STARTUP_SECONDS) is None
