"""The baseline servers of bench/serve_bench.py start and answer Predict.

Their figures are the denominators of the serving claims in BENCHMARKS.md ("direct
session.run", the null grpc.aio server); a baseline that no longer starts leaves every ratio
against it unmeasured. Each is started the way the benchmark starts it, on the benchmark's
own models, and called once with the project's client.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import serve_bench  # noqa: E402

from serving.client import Client  # noqa: E402


@pytest.fixture(scope="module")
def bench_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repository = tmp_path_factory.mktemp("bench") / "models"
    serve_bench.build_repository(repository, wide_hidden=8)
    return repository


@pytest.mark.parametrize("flags", [[serve_bench.DIRECT_SERVER], [serve_bench.NULL_SERVER]])
def test_baseline_server_answers_predict(bench_models, tmp_path, flags):
    server = serve_bench.bench_server(bench_models, flags, None, tmp_path)
    row = np.random.default_rng(0).random((1, *serve_bench.SAMPLE_SHAPE), dtype=np.float32)
    with server, Client(server.target, timeout=10) as client:
        response = client.predict("mlp", row)
    assert response.model == "mlp"
    if flags == [serve_bench.DIRECT_SERVER]:  # the null server answers without a model
        assert list(response.probabilities.shape) == [1, 10]
