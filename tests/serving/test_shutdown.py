"""SIGTERM drains: queued and running requests all finish, then the process exits 0."""

from __future__ import annotations

import time

import grpc
import numpy as np
import pytest

from serving.client import Client, predict_request


def test_sigterm_with_requests_in_flight_loses_none_and_exits_zero(model_repository, start_server):
    server = start_server(model_repository, "--max-queue-size", "64")
    with Client(server.target, timeout=30) as client:
        request = predict_request("slow", np.ones((1, 4), np.float32))
        # At least 6 runs of 'slow' (batches of 4, ~50 ms each): the drain has work to finish.
        calls = [client.stub.Predict.future(request, timeout=30) for _ in range(24)]
        deadline = time.monotonic() + 30
        while not any(call.done() for call in calls):  # the server is executing
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert sum(call.done() for call in calls) < len(calls)  # and more are queued
        server.process.send_signal(15)
        results = [call.result() for call in calls]  # raises if any was lost
        assert all(r.predictions.shape == [1, 1] for r in results)
        assert server.process.wait(30) == 0
        with pytest.raises(grpc.RpcError) as refused:  # nobody listens any more
            client.predict("slow", np.ones((1, 4), np.float32), timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    log = server.log()
    assert "event=shutdown_requested" in log and "event=stopped" in log
