"""The pieces of ``--workers N`` that need no server: statistics sums, cores, the port."""

from __future__ import annotations

import os
import socket

import pytest

from protos import grpc_service_pb2 as pb
from serving.control import merge_statistics
from serving.errors import SettingsError
from serving.workers import reserve_port, usable_cores


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
