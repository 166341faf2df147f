"""Fast tests of the load tester's pure parts: histogram, schedule, settings, payloads, report."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from itertools import islice
from pathlib import Path

import numpy as np
import pytest

from protos import grpc_service_pb2, predict_pb2
from serving.loadtest import cli
from serving.loadtest.calls import STREAM_ERROR, code_of_stream_error
from serving.loadtest.check import decode_response
from serving.loadtest.errors import InputError, SettingsError
from serving.loadtest.histogram import LatencyHistogram
from serving.loadtest.inputs import ModelSignature, fit_images, load_digits_images, random_rows
from serving.loadtest.payloads import build_payloads, kserve_request, with_request_id
from serving.loadtest.report import build_report
from serving.loadtest.runner import RunOutcome
from serving.loadtest.schedule import arrival_offsets
from serving.loadtest.server_metrics import difference, parse_metrics
from serving.loadtest.settings import (
    ConnectionSettings,
    LoadPlan,
    LoadTestSettings,
    Workload,
    default_metrics_url,
)

SIGNATURE = ModelSignature(
    model="mlp",
    version=3,
    input_name="input",
    dtype="float32",
    sample_shape=(1, 8, 8),
    input_range=(0.0, 1.0),
    task="classification",
    max_batch_size=256,
)


def exact_percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


# --- histogram ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_histogram_percentiles_are_within_the_stated_relative_error(seed: int) -> None:
    rng = random.Random(seed)
    # Sub-millisecond bulk with a heavy tail up to seconds, like a loaded server.
    values = [rng.lognormvariate(math.log(0.0008), 0.6) for _ in range(20_000)]
    values += [rng.uniform(0.05, 3.0) for _ in range(50)]
    histogram = LatencyHistogram(relative_error=0.005)
    histogram.record_many(values)
    for q in (0.1, 1, 50, 90, 99, 99.9, 99.99):
        exact = exact_percentile(values, q)
        assert abs(histogram.percentile(q) - exact) <= 0.005 * exact + 1e-12, q
    assert histogram.percentile(100) == max(values)
    assert histogram.min == min(values) and histogram.max == max(values)
    assert histogram.count == len(values)
    assert histogram.mean == pytest.approx(statistics.fmean(values))


def test_histogram_with_one_value_reports_it_exactly_and_empty_reports_nan() -> None:
    histogram = LatencyHistogram()
    assert math.isnan(histogram.percentile(50))
    histogram.record(0.00123)
    assert histogram.percentile(50) == 0.00123
    assert histogram.percentile(99.9) == 0.00123


def test_histogram_values_below_the_lowest_bucket_are_kept_and_counted() -> None:
    histogram = LatencyHistogram(lowest_seconds=1e-6)
    histogram.record_many([1e-9, 5e-7, 2e-6])
    assert histogram.count == 3
    assert histogram.percentile(0) == 1e-9
    assert sum(count for _, _, count in histogram.buckets()) == 3


def test_histogram_merge_equals_recording_everything_in_one() -> None:
    rng = random.Random(7)
    a_values = [rng.expovariate(1000) for _ in range(3000)]
    b_values = [rng.expovariate(200) for _ in range(1000)]
    a, b, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    a.record_many(a_values)
    b.record_many(b_values)
    both.record_many(a_values + b_values)
    a.merge(b)
    for q in (50, 99, 99.9):
        assert a.percentile(q) == both.percentile(q)
    with pytest.raises(SettingsError):
        a.merge(LatencyHistogram(relative_error=0.01))


def test_histogram_rejects_a_percentile_outside_0_to_100() -> None:
    with pytest.raises(SettingsError, match="percentile"):
        LatencyHistogram().percentile(101)


# --- schedule ----------------------------------------------------------------------------------


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    offsets = np.array(list(islice(arrival_offsets(500.0, "poisson", seed=3), 20_000)))
    gaps = np.diff(offsets)
    assert np.all(gaps >= 0)
    assert offsets[-1] / len(offsets) == pytest.approx(1 / 500.0, rel=0.03)
    # Exponential: coefficient of variation 1 (constant spacing would give 0).
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


def test_poisson_schedule_is_reproducible_by_seed_and_constant_is_even() -> None:
    first = list(islice(arrival_offsets(100.0, seed=5), 50))
    assert first == list(islice(arrival_offsets(100.0, seed=5), 50))
    assert first != list(islice(arrival_offsets(100.0, seed=6), 50))
    constant = list(islice(arrival_offsets(4.0, "constant"), 4))
    assert constant == [0.0, 0.25, 0.5, 0.75]


def test_schedule_rejects_a_non_positive_rate() -> None:
    with pytest.raises(SettingsError, match="rate"):
        next(arrival_offsets(0.0))


# --- settings ----------------------------------------------------------------------------------


def test_plan_needs_exactly_one_load_model_and_a_length() -> None:
    with pytest.raises(SettingsError, match="exactly one"):
        LoadPlan(concurrency=4, rate_per_second=10.0, duration_seconds=1.0)
    with pytest.raises(SettingsError, match="--duration and/or --requests"):
        LoadPlan(concurrency=4)
    with pytest.raises(SettingsError, match="--concurrency must be >= 1; got 0"):
        LoadPlan(concurrency=0, duration_seconds=1.0)


def test_hard_bound_defaults_to_warmup_plus_duration_plus_timeout_plus_slack() -> None:
    plan = LoadPlan(concurrency=1, duration_seconds=10.0, warmup_seconds=2.0, timeout_seconds=3.0)
    assert plan.hard_bound_seconds == pytest.approx(20.0)
    assert LoadPlan(concurrency=1, requests=5, max_seconds=1.5).hard_bound_seconds == 1.5


def test_target_and_default_metrics_url() -> None:
    assert default_metrics_url("10.0.0.7:8001") == "http://10.0.0.7:8002/metrics"
    with pytest.raises(SettingsError, match="HOST:PORT"):
        ConnectionSettings(target="localhost")
    with pytest.raises(SettingsError, match="fashion-mnist needs --data-dir"):
        Workload(model="mlp", input_source="fashion-mnist")


def test_check_needs_a_model_repository(tmp_path: Path) -> None:
    common = {
        "connection": ConnectionSettings(target="127.0.0.1:1"),
        "workload": Workload(model="mlp"),
        "plan": LoadPlan(concurrency=1, duration_seconds=1.0),
    }
    with pytest.raises(SettingsError, match="--model-repository"):
        LoadTestSettings(**common, check_samples=10)
    with pytest.raises(SettingsError, match=r"\.png"):
        LoadTestSettings(**common, plot_path=tmp_path / "plot.jpg")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "mlp", "--concurrency", "0"], "--concurrency must be >= 1; got 0"),
        (["--model", "mlp", "--rows", "0"], "--rows must be >= 1"),
        (["--model", "mlp", "--target", "nohost"], "HOST:PORT"),
        (["--model", "mlp", "--concurrency", "2", "--rate", "5"], "not allowed with argument"),
        (["--model", "mlp", "--api", "rest"], "invalid choice"),
        (["--concurrency", "2"], "--model"),
    ],
)
def test_cli_bad_arguments_print_one_line_and_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    json_path = tmp_path / "report.json"
    with pytest.raises(SystemExit) as exited:
        code = cli.main([*argv, "--json", str(json_path)])
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert message in err
    assert not json_path.exists()


# --- inputs and payloads -----------------------------------------------------------------------


def test_random_rows_stay_in_the_model_input_range() -> None:
    rows = random_rows(SIGNATURE, 100, seed=1)
    assert rows.shape == (100, 1, 8, 8) and rows.dtype == np.float32
    assert rows.min() >= 0.0 and rows.max() <= 1.0


def test_digits_images_fit_an_8x8_model_and_refuse_a_28x28_one() -> None:
    images = load_digits_images()
    rows = fit_images(images, SIGNATURE, 2000)
    assert rows.shape == (2000, 1, 8, 8)
    np.testing.assert_array_equal(rows[1797], rows[0])  # cycles through the 1,797 images
    assert rows.min() >= 0.0 and rows.max() <= 1.0
    wide = ModelSignature(**{**SIGNATURE.__dict__, "sample_shape": (1, 28, 28)})
    with pytest.raises(InputError, match=r"64 values .* expects rows of shape \[1, 28, 28\]"):
        fit_images(images, wide, 10)


def test_request_id_appended_to_serialized_request_parses_back() -> None:
    batch = np.ones((2, 1, 8, 8), dtype=np.float32)
    payload = kserve_request(SIGNATURE, batch, version=3)
    for request_id in ("1", "12345", "x" * 300):  # 300 bytes: two-byte varint length
        parsed = grpc_service_pb2.ModelInferRequest.FromString(with_request_id(payload, request_id))
        assert parsed.id == request_id
        assert parsed.model_name == "mlp" and parsed.model_version == "3"
        assert list(parsed.inputs[0].shape) == [2, 1, 8, 8]
        assert parsed.raw_input_contents[0] == batch.tobytes()


def test_predict_payload_carries_shape_dtype_and_little_endian_bytes() -> None:
    batch = np.arange(64, dtype=np.float32).reshape(1, 1, 8, 8)
    (payload,) = build_payloads("predict", SIGNATURE, [batch], version=0, top_k=3)
    request = predict_pb2.PredictRequest.FromString(payload)
    assert request.model == "mlp" and request.version == 0 and request.top_k == 3
    assert list(request.input.shape) == [1, 1, 8, 8]
    assert request.input.dtype == predict_pb2.FLOAT32
    np.testing.assert_array_equal(
        np.frombuffer(request.input.data, "<f4").reshape(1, 1, 8, 8), batch
    )


def test_decode_response_reads_predict_and_kserve_outputs() -> None:
    probabilities = np.array([[0.25, 0.75]], dtype=np.float32)
    predict = predict_pb2.PredictResponse(
        model="mlp",
        version=2,
        probabilities=predict_pb2.Tensor(
            shape=[1, 2], dtype=predict_pb2.FLOAT32, data=probabilities.tobytes()
        ),
    )
    version, outputs = decode_response("predict", predict.SerializeToString())
    assert version == 2
    np.testing.assert_array_equal(outputs["probabilities"], probabilities)
    infer = grpc_service_pb2.ModelInferResponse(
        model_name="mlp",
        model_version="2",
        outputs=[
            grpc_service_pb2.ModelInferResponse.InferOutputTensor(
                name="probabilities", datatype="FP32", shape=[1, 2]
            )
        ],
        raw_output_contents=[probabilities.tobytes()],
    )
    stream = grpc_service_pb2.ModelStreamInferResponse(infer_response=infer)
    version, outputs = decode_response("stream", stream.SerializeToString())
    assert version == 2
    np.testing.assert_array_equal(outputs["probabilities"], probabilities)


def test_stream_error_codes_are_read_from_the_message_prefix() -> None:
    assert code_of_stream_error("NOT_FOUND: unknown model 'x'") == "NOT_FOUND"
    assert code_of_stream_error("[INVALID_ARGUMENT] shape") == "INVALID_ARGUMENT"
    assert code_of_stream_error("something broke") == STREAM_ERROR
    assert code_of_stream_error("FOO: not a code") == STREAM_ERROR


# --- server metrics ----------------------------------------------------------------------------

BEFORE = """\
# HELP d2lserve_requests_total Finished requests.
# TYPE d2lserve_requests_total counter
d2lserve_requests_total{model="mlp",version="1",api="predict",code="OK"} 10.0
d2lserve_requests_total{model="other",version="1",api="predict",code="OK"} 99.0
# HELP d2lserve_batch_size Rows per execution.
# TYPE d2lserve_batch_size histogram
d2lserve_batch_size_bucket{model="mlp",version="1",le="1.0"} 10.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="2.0"} 10.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="4.0"} 10.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="8.0"} 10.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="+Inf"} 10.0
d2lserve_batch_size_count{model="mlp",version="1"} 10.0
d2lserve_batch_size_sum{model="mlp",version="1"} 10.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 3.5
"""
AFTER = """\
# HELP d2lserve_requests_total Finished requests.
# TYPE d2lserve_requests_total counter
d2lserve_requests_total{model="mlp",version="1",api="predict",code="OK"} 40.0
d2lserve_requests_total{model="mlp",version="1",api="predict",code="NOT_FOUND"} 2.0
d2lserve_requests_total{model="other",version="1",api="predict",code="OK"} 500.0
# HELP d2lserve_batch_size Rows per execution.
# TYPE d2lserve_batch_size histogram
d2lserve_batch_size_bucket{model="mlp",version="1",le="1.0"} 14.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="2.0"} 16.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="4.0"} 16.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="8.0"} 19.0
d2lserve_batch_size_bucket{model="mlp",version="1",le="+Inf"} 19.0
d2lserve_batch_size_count{model="mlp",version="1"} 19.0
d2lserve_batch_size_sum{model="mlp",version="1"} 40.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 5.0
"""


def test_server_metrics_difference_gives_requests_and_batch_sizes_of_the_run() -> None:
    before, after = parse_metrics(BEFORE, "mlp"), parse_metrics(AFTER, "mlp")
    assert before.requests_total == 10.0
    run = difference(before, after)
    assert run.requests == 32.0
    assert run.requests_by_code == {"NOT_FOUND": 2.0, "OK": 30.0}
    assert run.executions == 9.0 and run.rows == 30.0
    assert run.sizes == (("1", 4.0), ("2", 2.0), ("5-8", 3.0))
    assert run.mean_batch_size == pytest.approx(30 / 9)
    assert run.cpu_seconds == pytest.approx(1.5)


# --- report ------------------------------------------------------------------------------------


def _settings(**overrides: object) -> LoadTestSettings:
    base: dict[str, object] = {
        "connection": ConnectionSettings(target="127.0.0.1:8001"),
        "workload": Workload(model="mlp", rows=4),
        "plan": LoadPlan(concurrency=8, duration_seconds=2.0),
    }
    return LoadTestSettings(**{**base, **overrides})  # type: ignore[arg-type]


def test_report_figures_and_the_error_gate() -> None:
    outcome = RunOutcome(mode="closed", measured_seconds=2.0, latency=LatencyHistogram())
    outcome.latency.record_many([0.001] * 99 + [0.010])
    outcome.ok = 100
    outcome.errors = Counter({"UNAVAILABLE": 1})
    report = build_report(_settings(), outcome, None, "skipped, unreachable", None)
    assert report.requests == 101
    assert report.requests_per_second == pytest.approx(50.5)
    assert report.rows_per_second == pytest.approx(200.0)
    assert report.latency.p50_ms == pytest.approx(1.0, rel=0.005)
    assert report.latency.max_ms == pytest.approx(10.0)
    assert report.error_ratio == pytest.approx(1 / 101)
    assert not report.passed and "error ratio" in report.failures[0]
    tolerant = build_report(_settings(max_error_ratio=0.05), outcome, None, "", None)
    assert tolerant.passed
    assert tolerant.to_json()["latency"]["p99_ms"] == pytest.approx(1.0, rel=0.005)  # type: ignore[index]


def test_report_counts_requests_cut_by_the_time_bound_as_failures() -> None:
    outcome = RunOutcome(mode="closed", measured_seconds=1.0, latency=LatencyHistogram())
    outcome.latency.record(0.5)
    outcome.ok, outcome.unfinished, outcome.cut_by_time_bound = 1, 8, True
    report = build_report(_settings(), outcome, None, "", None)
    assert report.error_ratio == pytest.approx(8 / 9)
    assert not report.passed
    empty = build_report(_settings(), RunOutcome("closed", 0.0, LatencyHistogram()), None, "", None)
    assert empty.failures == ("no measured request finished",)
    assert empty.to_json()["latency"]["p50_ms"] is None  # type: ignore[index]
