"""``--workers 2``: real supervisor and worker processes behind one port (issue 13).

Which worker a connection lands on is the kernel's choice (SO_REUSEPORT hashes the
connection), so the tests do not guess: :func:`channels_by_worker` makes one call on each of
a client's connections and reads every worker's own statistics over its control socket to
learn where the call went. Every server here is started for its test; together they take
well under a minute on the shared 2-core machine.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import ServerProcess
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc, predict_pb2
from serving.client import Client, predict_request
from serving.control import PeerUnreachable, ask_blocking, socket_path, statistics_of
from serving.loadtest.errors import SettingsError as LoadTestSettingsError
from serving.loadtest.session import run_loadtest
from serving.loadtest.settings import ConnectionSettings, LoadPlan, LoadTestSettings, Workload

WORKERS = ("--workers", "2")
MLP = predict_request("mlp", np.zeros((1, 1, 8, 8), np.float32))
REG = predict_request("reg", np.ones((2, 4), np.float32))
SLOW = predict_request("slow", np.ones((1, 4), np.float32))


# -- looking inside the server ---------------------------------------------------------


def run_dir(server: ServerProcess) -> Path:
    match = re.search(r"event=listening address=\S+ workers=\d+ run_dir=(\S+)", server.log())
    assert match, server.log()
    return Path(match.group(1))


def ask(server: ServerProcess, worker: int, op: str, **fields: str) -> dict:
    return ask_blocking(socket_path(run_dir(server), worker), {"op": op, **fields}, 10.0)


def worker_successes(server: ServerProcess, worker: int, model: str) -> int:
    """Successful requests of ``model`` answered by one worker (its own statistics)."""
    statistics = statistics_of(ask(server, worker, "statistics"))
    return sum(e.inference_stats.success.count for e in statistics.model_stats if e.name == model)


def ready_versions(server: ServerProcess, worker: int, model: str) -> list[str]:
    entries = ask(server, worker, "index")["index"]
    return [version for name, version, state, _ in entries if name == model and state == "READY"]


def channels_by_worker(server: ServerProcess, client: Client) -> dict[int, list[int]]:
    """The indexes of the client's connections, grouped by the worker each one reaches.

    Makes one ``reg`` call per connection.
    """
    groups: dict[int, list[int]] = {0: [], 1: []}
    for index, stub in enumerate(client.stubs):
        before = [worker_successes(server, w, "reg") for w in (0, 1)]
        stub.Predict(REG, timeout=10)
        after = [worker_successes(server, w, "reg") for w in (0, 1)]
        (worker,) = [w for w in (0, 1) if after[w] == before[w] + 1]
        groups[worker].append(index)
    return groups


def scrape(server: ServerProcess) -> list:
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(text_string_to_metric_families(response.read().decode()))


def metric(families: list, sample_name: str, **labels: str) -> float:
    """The sum of the samples called ``sample_name`` whose labels include ``labels``."""
    return sum(
        sample.value
        for family in families
        for sample in family.samples
        if sample.name == sample_name and labels.items() <= sample.labels.items()
    )


def serving(channel: grpc.Channel) -> bool:
    """Whether the health service of the worker behind ``channel`` says SERVING."""
    request = health_pb2.HealthCheckRequest()
    status = health_pb2_grpc.HealthStub(channel).Check(request, timeout=5).status
    return status == health_pb2.HealthCheckResponse.SERVING


def worker_pids(server: ServerProcess) -> dict[int, int]:
    """The latest pid of each worker, from the supervisor's log."""
    found = re.findall(r"event=worker_started worker=(\d+) pid=(\d+)", server.log())
    return {int(worker): int(pid) for worker, pid in found}


def kill_and_wait_restarted(server: ServerProcess, worker: int) -> int:
    """SIGKILL one worker, wait until its successor is started and ready; the killed pid."""
    victim = worker_pids(server)[worker]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    deadline = time.monotonic() + 60
    while worker_pids(server)[worker] == victim or not ask_ready(server, worker):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    server.wait_serving(60)
    return victim


def ask_ready(server: ServerProcess, worker: int) -> bool:
    try:
        return bool(ask(server, worker, "ready")["ready"])
    except PeerUnreachable:
        return False


@pytest.fixture
def start_workers(start_server):
    def start(repository: Path, *args: str) -> ServerProcess:
        return start_server(repository, *WORKERS, *args)

    return start


# -- the tests -------------------------------------------------------------------------


def test_two_workers_serve_every_model_and_report_it_per_worker(model_repository, start_workers):
    server = start_workers(model_repository)
    with Client(server.target, connections=4) as client:
        for request in (MLP, REG, SLOW):
            assert client.next_stub().Predict(request, timeout=10).model == request.model
        assert [info.name for info in client.list_models()] == ["mlp", "reg", "slow"]
    for worker in (0, 1):
        for model in ("mlp", "reg", "slow"):
            assert ready_versions(server, worker, model) == ["1"]
    log = server.log()
    assert re.search(r"event=ready workers=2 rss=[\d.]+MiB worker_rss=[\d.]+MiB,[\d.]+MiB", log)
    # The load tester spreads its connections over the workers and reads the whole server.
    # (24 connections: that all reach one worker has odds 2 in 2**24.)
    settings = LoadTestSettings(
        connection=ConnectionSettings(target=server.target, connections=24),
        workload=Workload(model="mlp", pool_size=8),
        plan=LoadPlan(concurrency=24, requests=400, warmup_seconds=0.0, timeout_seconds=10.0),
        metrics_url=f"http://127.0.0.1:{server.metrics_port}/metrics",
    )
    before = [worker_successes(server, w, "mlp") for w in (0, 1)]
    report = asyncio.run(run_loadtest(settings)).report
    after = [worker_successes(server, w, "mlp") for w in (0, 1)]
    assert report.ok == report.requests == 400, report.errors
    assert after[0] > before[0] and after[1] > before[1], (before, after)
    assert report.server is not None and report.server.requests == 400, report.server_note
    assert report.server.cpu_seconds is not None and report.server.cpu_seconds > 0
    # The port is the server's: a second server is refused, not silently let in.
    for workers in ("2", "1"):
        command = [
            sys.executable, "-m", "serving", "--model-repository", str(model_repository),
            "--grpc-port", str(server.port), "--metrics-port", "0", "--workers", workers,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "cannot listen on" in done.stderr, done.stderr


def test_2000_requests_over_8_connections_all_succeed_on_both_workers_and_totals_agree(
    model_repository, start_workers
):
    server = start_workers(model_repository)
    with Client(server.target, connections=24) as client:
        groups = channels_by_worker(server, client)
        # 24 connections that all reached one worker would mean they were one connection.
        assert len(groups[0]) >= 4 and len(groups[1]) >= 4, groups
        stubs = [client.stubs[i] for i in groups[0][:4] + groups[1][:4]]
        probes = len(client.stubs)
        before = [worker_successes(server, w, "mlp") for w in (0, 1)]
        calls = [stubs[i % 8].Predict.future(MLP, timeout=60) for i in range(2000)]
        assert all(call.result().model == "mlp" for call in calls)
        after = [worker_successes(server, w, "mlp") for w in (0, 1)]
        assert after[0] - before[0] == after[1] - before[1] == 1000  # round-robin, 4 and 4
        # The whole server's view, from whichever worker answers, sums both workers.
        info = client.next_stub().GetModel(predict_pb2.GetModelRequest(name="mlp"), timeout=10)
        assert info.statistics.requests == info.statistics.rows == 2000
        listed = {i.name: i.statistics.requests for i in client.list_models()}
        assert listed == {"mlp": 2000, "reg": probes, "slow": 0}
        for index in (groups[0][0], groups[1][0]):  # each worker answers with the totals
            kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(client.channels[index])
            stats = kserve.ModelStatistics(pb.ModelStatisticsRequest(), timeout=10)
            by_name = {entry.name: entry for entry in stats.model_stats}
            assert by_name["mlp"].inference_stats.success.count == 2000
            assert by_name["mlp"].inference_count == 2000
            assert by_name["reg"].inference_stats.success.count == probes
            assert by_name["reg"].inference_count == 2 * probes
            assert 0 < by_name["mlp"].execution_count <= 2000
            assert sum(b.compute_infer.count for b in by_name["mlp"].batch_stats) == (
                by_name["mlp"].execution_count
            )
    families = scrape(server)
    ok = {"model": "mlp", "version": "1", "api": "predict", "code": "OK"}
    assert metric(families, "d2lserve_requests_total", **ok) == 2000
    assert metric(families, "d2lserve_requests_total", model="reg", code="OK") == probes
    assert metric(families, "d2lserve_inferred_rows_total", model="reg") == 2 * probes
    assert metric(families, "d2lserve_request_duration_seconds_count", model="mlp") == 2000
    assert metric(families, "d2lserve_workers") == 2
    depths = {
        sample.labels.get("worker"): sample.value
        for family in families
        for sample in family.samples
        if sample.name == "d2lserve_queue_depth" and sample.labels["model"] == "mlp"
    }
    assert depths == {"0": 0, "1": 0}  # per worker, labelled with its index
    for worker in ("0", "1"):
        assert metric(families, "d2lserve_worker_resident_memory_bytes", worker=worker) > 1e7
    assert metric(families, "d2lserve_model_state", model="mlp", state="ready") == 1


def test_sigterm_with_requests_in_flight_drains_every_worker_and_exits_zero(
    model_repository, start_workers
):
    server = start_workers(model_repository, "--max-queue-size", "64")
    with Client(server.target, connections=16, timeout=30) as client:
        groups = channels_by_worker(server, client)
        stubs = [client.stubs[groups[0][0]], client.stubs[groups[1][0]]]
        # 24 calls a worker: at least 6 runs of 'slow' (batches of 4, ~50 ms each) per worker.
        calls = [stubs[i % 2].Predict.future(SLOW, timeout=30) for i in range(48)]
        deadline = time.monotonic() + 30
        while not any(call.done() for call in calls):  # the workers are executing
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert sum(call.done() for call in calls) < len(calls)  # and more are queued
        server.process.send_signal(signal.SIGTERM)
        assert all(call.result().model == "slow" for call in calls)  # none lost
        assert server.process.wait(30) == 0
    log = server.log()
    for worker in (0, 1):
        assert f"worker={worker} event=shutdown_requested" in log
        assert re.search(rf"worker={worker} event=stopped", log)
    assert "event=stopped workers=2 code=0" in log
    assert not run_dir(server).exists()  # sockets and metric files removed


def test_killed_worker_is_restarted_while_the_other_keeps_serving(model_repository, start_workers):
    server = start_workers(model_repository)
    with Client(server.target, connections=16) as client:
        groups = channels_by_worker(server, client)
        survivor = client.stubs[groups[0][0]]
        sent = len(client.stubs)
        victim = worker_pids(server)[1]
        subprocess.run(["kill", "-9", str(victim)], check=True)
        deadline = time.monotonic() + 30
        # The surviving worker says NOT_SERVING while the server misses a worker.
        while serving(client.channels[groups[0][0]]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        for _ in range(50):  # worker 0 keeps answering meanwhile
            assert survivor.Predict(REG, timeout=10).model == "reg"
            sent += 1
        while worker_pids(server)[1] == victim or not ask_ready(server, 1):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        server.wait_serving(60)
        assert ready_versions(server, 1, "reg") == ["1"]
        with Client(server.target, connections=8) as fresh:
            for stub in fresh.stubs:
                assert stub.Predict(REG, timeout=10, wait_for_ready=True).model == "reg"
                sent += 1
    log = server.log()
    assert re.search(rf"event=worker_died worker=1 pid={victim} code=-9", log)
    families = scrape(server)
    assert metric(families, "d2lserve_worker_restarts_total", worker="1") == 1
    assert metric(families, "d2lserve_worker_restarts_total", worker="0") == 0
    # The dead worker's counts stay in the server's totals.
    assert metric(families, "d2lserve_requests_total", model="reg", code="OK") == sent


def test_hung_worker_is_killed_and_restarted_while_the_other_keeps_serving(
    model_repository, start_workers
):
    server = start_workers(model_repository, "--worker-timeout", "3")
    with Client(server.target, connections=16) as client:
        groups = channels_by_worker(server, client)
        survivor = client.stubs[groups[0][0]]
        victim = worker_pids(server)[1]
        deadline = time.monotonic() + 30
        while "event=ready workers=2" not in server.log():  # the supervisor heard from both
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.05)
        os.kill(victim, signal.SIGSTOP)  # alive, holding its share of the port, silent
        try:
            while worker_pids(server)[1] == victim:
                assert time.monotonic() < deadline, server.log()
                assert survivor.Predict(REG, timeout=10).model == "reg"
                time.sleep(0.1)
        finally:
            if worker_pids(server)[1] == victim:  # the test failed: do not leave it stopped
                os.kill(victim, signal.SIGKILL)
        while not ask_ready(server, 1):
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.1)
        assert ready_versions(server, 1, "reg") == ["1"]
        server.wait_serving(60)
    log = server.log()
    assert re.search(
        rf"event=worker_unresponsive worker=1 pid={victim} silent_s=[0-9.]+ "
        r"answered_before=True worker_timeout_s=3.0 action=kill",
        log,
    ), log
    assert re.search(rf"event=worker_died worker=1 pid={victim} code=-9", log)
    families = scrape(server)
    assert metric(families, "d2lserve_worker_restarts_total", worker="1") == 1
    assert metric(families, "d2lserve_worker_restarts_total", worker="0") == 0


def test_busy_workers_are_not_taken_for_hung(model_repository, start_workers):
    # Both workers run 'slow' batches back to back for twice the timeout: busy, not hung.
    server = start_workers(model_repository, "--worker-timeout", "3", "--max-queue-size", "64")
    with Client(server.target, connections=8, timeout=60) as client:
        pids = worker_pids(server)
        until = time.monotonic() + 6
        while time.monotonic() < until:
            calls = [stub.Predict.future(SLOW, timeout=60) for stub in client.stubs for _ in "ab"]
            assert all(call.result().model == "slow" for call in calls)
        assert worker_pids(server) == pids
    assert "event=worker_unresponsive" not in server.log()


def exited(pid: int) -> bool:
    """Gone, or a zombie no one has reaped yet (a worker whose supervisor died)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_workers_drain_and_clean_up_when_the_supervisor_is_killed(model_repository, start_workers):
    server = start_workers(model_repository)
    pids = worker_pids(server)
    directory = run_dir(server)
    assert (directory / "metrics").is_dir()
    server.process.kill()  # SIGKILL: the supervisor can neither forward nor clean up
    server.process.wait()
    deadline = time.monotonic() + 30
    while not all(exited(pid) for pid in pids.values()):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    log = server.log()
    for worker in (0, 1):
        assert f"worker={worker} event=supervisor_gone" in log, log
        assert re.search(rf"worker={worker} event=stopped", log), log
    assert not directory.exists(), sorted(p.name for p in directory.rglob("*"))


def test_new_version_in_the_repository_becomes_ready_in_every_worker(
    model_repository, start_workers, tmp_path
):
    repository = tmp_path / "models"
    shutil.copytree(model_repository, repository)
    server = start_workers(repository)
    staging = repository / ".staging-reg-2"
    staging.mkdir()
    shutil.copy(repository / "reg" / "1" / "model.onnx", staging / "model.onnx")
    staging.rename(repository / "reg" / "2")
    deadline = time.monotonic() + 30
    while any(ready_versions(server, w, "reg") != ["2"] for w in (0, 1)):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    with Client(server.target, connections=8) as client:
        assert {stub.Predict(REG, timeout=10).version for stub in client.stubs} == {2}


def test_explicit_load_and_unload_apply_to_every_worker_before_returning(
    model_repository, start_workers
):
    server = start_workers(
        model_repository, "--model-control-mode", "explicit", "--load-model", "mlp"
    )
    assert [ready_versions(server, w, "reg") for w in (0, 1)] == [[], []]
    with server.channel() as channel:
        kserve = grpc_service_pb2_grpc.GRPCInferenceServiceStub(channel)
        kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="reg"), timeout=60)
        assert [ready_versions(server, w, "reg") for w in (0, 1)] == [["1"], ["1"]]
        with Client(server.target, connections=4) as client:
            for stub in client.stubs:
                assert stub.Predict(REG, timeout=10).model == "reg"
        families = scrape(server)
        assert metric(families, "d2lserve_requests_total", model="reg", version="1") == 4
        with pytest.raises(grpc.RpcError) as missing:
            kserve.RepositoryModelLoad(pb.RepositoryModelLoadRequest(model_name="nope"), timeout=60)
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND
        # A restarted worker serves what the others serve, not only --load-model.
        kill_and_wait_restarted(server, 1)
        assert ready_versions(server, 1, "reg") == ["1"]
        kserve.RepositoryModelUnload(pb.RepositoryModelUnloadRequest(model_name="reg"), timeout=60)
        assert [ready_versions(server, w, "reg") for w in (0, 1)] == [[], []]
        assert [ready_versions(server, w, "mlp") for w in (0, 1)] == [["1"], ["1"]]
        # As in one process, the unloaded version's series go from /metrics; mlp's stay.
        samples = [s for family in scrape(server) for s in family.samples]
        assert not [
            s for s in samples if s.labels.get("model") == "reg" and s.labels.get("version")
        ]
        assert [s for s in samples if s.labels.get("model") == "mlp" and s.labels.get("version")]
    with Client(server.target, connections=8) as client:
        for stub in client.stubs:
            with pytest.raises(grpc.RpcError) as gone:
                stub.Predict(REG, timeout=10)
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND


def test_connections_must_be_at_least_one():
    with pytest.raises(LoadTestSettingsError, match="--connections must be >= 1; got 0"):
        ConnectionSettings(target="127.0.0.1:8001", connections=0)
    with pytest.raises(ValueError, match="connections must be >= 1, got 0"):
        Client("127.0.0.1:8001", connections=0)


@pytest.mark.parametrize("value", ["0", "-2", "abc", "1.5"])
def test_bad_worker_count_is_one_line_and_exit_2(model_repository, value):
    command = [sys.executable, "-m", "serving", "--model-repository", str(model_repository)]
    done = subprocess.run(
        [*command, "--workers", value], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--workers" in lines[0] and "'auto'" in lines[0], done.stderr


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf"])
def test_bad_worker_timeout_is_one_line_and_exit_2(model_repository, value):
    command = [sys.executable, "-m", "serving", "--model-repository", str(model_repository)]
    done = subprocess.run(
        [*command, *WORKERS, f"--worker-timeout={value}"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--worker-timeout" in lines[0] and "seconds" in lines[0], done.stderr


def test_a_worker_that_cannot_start_stops_the_server_with_its_exit_code(model_repository, tmp_path):
    command = [
        sys.executable, "-m", "serving", "--model-repository", str(model_repository),
        "--grpc-port", "0", "--metrics-port", "0", *WORKERS,
        "--model-control-mode", "explicit", "--load-model", "missing",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "event=worker_failed_at_start" in done.stderr
    assert "--load-model missing" in done.stderr


def test_ctrl_c_on_the_whole_process_group_drains_once_and_exits_zero(model_repository, tmp_path):
    """A terminal's Ctrl-C signals the supervisor's group; workers must not be hit twice."""
    command = [
        sys.executable, "-m", "serving", "--model-repository", str(model_repository),
        "--grpc-port", "0", "--metrics-port", "0", *WORKERS,
    ]  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stderr=log, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "event=ready workers=2" not in log_path.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.1)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0, log_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert "worker=0 event=stopped" in text and "worker=1 event=stopped" in text
    assert "event=stopped workers=2 code=0" in text
