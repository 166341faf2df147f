"""A client's mistakes, however malformed, get a proper status and never a traceback.

Raw bytes go over a generic channel (no serializer: the bytes are sent as they are) to a
dedicated server process, so undecodable messages, bit flips, truncations, invalid UTF-8
and hostile version strings reach the server exactly as an adversarial client sends them.
"""

from __future__ import annotations

import re

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serving_support import ServerProcess

from protos import grpc_service_pb2 as pb
from protos import predict_pb2
from serving.client import predict_request
from serving.errors import MAX_MESSAGE_CHARS

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_METADATA = "/inference.GRPCInferenceService/ModelMetadata"
MODEL_READY = "/inference.GRPCInferenceService/ModelReady"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"
PREDICT = "/d2lserve.v1.PredictionService/Predict"
# What a client's mistake may get; UNKNOWN and INTERNAL would be the server's fault.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.FAILED_PRECONDITION,
}
FUZZ = settings(
    max_examples=60,
    derandomize=True,  # the same examples every run
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ROW = np.zeros((1, 1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def hostile(model_repository, tmp_path_factory):
    """A server of its own, so its log holds only what these tests caused."""
    process = ServerProcess(model_repository)
    process.start(tmp_path_factory.mktemp("hostile-logs"))
    with process.channel() as channel:
        yield process, channel
    assert process.stop() == 0, process.log()
    assert "Traceback" not in process.log()


def infer_request(request_id: str = "", version: str = "", model: str = "mlp"):
    tensor = pb.ModelInferRequest.InferInputTensor(name="input", datatype="FP32", shape=ROW.shape)
    return pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=[tensor],
        raw_input_contents=[ROW.tobytes()],
    )


VALID = {
    MODEL_INFER: infer_request("x").SerializeToString(),
    PREDICT: predict_request("mlp", ROW).SerializeToString(),
}


def unary(channel: grpc.Channel, method: str, body: bytes) -> tuple[grpc.StatusCode, str]:
    call = channel.unary_unary(method)  # no serializers: bytes in, bytes out
    try:
        call(body, timeout=10)
    except grpc.RpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


def with_invalid_utf8_name(valid: bytes) -> bytes:
    """Field 1 (model name in both request types) as bytes that are not UTF-8."""
    return b"\x0a\x04\xff\xfe\xc3\x28" + valid


@st.composite
def hostile_bytes(draw, valid: bytes) -> bytes:
    """Random bytes, or a valid message truncated, bit-flipped or with a bad UTF-8 name."""
    kind = draw(st.sampled_from(["random", "truncated", "flipped", "utf8"]))
    if kind == "random":
        return draw(st.binary(max_size=256))
    if kind == "truncated":
        return valid[: draw(st.integers(0, len(valid) - 1))]
    if kind == "utf8":
        return with_invalid_utf8_name(valid)
    flipped = bytearray(valid)
    for position in draw(st.lists(st.integers(0, len(valid) * 8 - 1), min_size=1, max_size=4)):
        flipped[position // 8] ^= 1 << (position % 8)
    return bytes(flipped)


@pytest.mark.parametrize("method", [MODEL_INFER, PREDICT])
def test_fuzzed_unary_requests_get_a_client_error_status_never_unknown(hostile, method):
    process, channel = hostile

    @FUZZ
    @given(body=hostile_bytes(VALID[method]))
    def check(body: bytes) -> None:
        code, details = unary(channel, method, body)
        assert code in ALLOWED, (code, details, body)
        assert len(details) <= MAX_MESSAGE_CHARS + 100

    check()
    assert unary(channel, method, VALID[method])[0] == grpc.StatusCode.OK
    assert "Traceback" not in process.log()


def test_fuzzed_stream_messages_end_the_stream_with_a_client_error_never_unknown(hostile):
    process, channel = hostile
    valid = infer_request("x").SerializeToString()
    call = channel.stream_stream(STREAM)

    @FUZZ
    @given(body=hostile_bytes(valid))
    def check(body: bytes) -> None:
        try:
            responses = list(call(iter([valid, body, valid]), timeout=10))
        except grpc.RpcError as error:
            assert error.code() in ALLOWED, (error.code(), error.details(), body)
            return
        # The bytes happened to decode: every message is answered and the stream ends.
        assert len(responses) == 3

    check()
    assert "Traceback" not in process.log()


def test_undecodable_requests_are_invalid_argument_with_a_short_message(hostile):
    process, channel = hostile
    code, details = unary(channel, MODEL_INFER, b"\xff\xff\xff")
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in details
    code, details = unary(channel, PREDICT, with_invalid_utf8_name(VALID[PREDICT]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid d2lserve.v1.PredictRequest" in details
    # Logged, but rate-limited: a flood of bad calls is not a flood of log lines.
    for _ in range(20):
        unary(channel, MODEL_INFER, b"\xff")
    assert 1 <= process.log().count("event=undecodable_request") <= 3


@pytest.mark.parametrize(
    "version", ["²", "01", "\u0661", "\u0967", "9" * 5000, "-1", "0", " 1", "1.0", "9" * 19]
)
def test_a_bad_model_version_is_invalid_argument_on_every_rpc(hostile, version):
    _, channel = hostile
    code, details = unary(channel, MODEL_INFER, infer_request(version=version).SerializeToString())
    assert code == grpc.StatusCode.INVALID_ARGUMENT, details
    assert "model_version" in details and len(details) < 500
    metadata = pb.ModelMetadataRequest(name="mlp", version=version).SerializeToString()
    assert unary(channel, MODEL_METADATA, metadata)[0] == grpc.StatusCode.INVALID_ARGUMENT
    ready = channel.unary_unary(MODEL_READY, response_deserializer=pb.ModelReadyResponse.FromString)
    request = pb.ModelReadyRequest(name="mlp", version=version).SerializeToString()
    assert ready(request, timeout=10).ready is False


def test_a_huge_model_name_is_not_found_with_a_short_message(hostile):
    _, channel = hostile
    name = "m" * 20_000
    code, details = unary(channel, MODEL_INFER, infer_request(model=name).SerializeToString())
    assert code == grpc.StatusCode.NOT_FOUND
    assert len(details) <= MAX_MESSAGE_CHARS + 100
    assert "not found" in details and "available models" in details
    code, details = unary(
        channel, PREDICT, predict_pb2.PredictRequest(model=name).SerializeToString()
    )
    assert code == grpc.StatusCode.NOT_FOUND and len(details) <= MAX_MESSAGE_CHARS + 100


def test_a_bad_version_inside_a_stream_is_answered_and_the_stream_goes_on(hostile):
    _, channel = hostile
    call = channel.stream_stream(
        STREAM,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    requests = [infer_request("1"), infer_request("2", version="²"), infer_request("3")]
    responses = list(call(iter(requests), timeout=10))  # ends: no hang until the deadline
    by_id = {r.infer_response.id: r for r in responses}
    assert sorted(by_id) == ["1", "2", "3"]
    assert "model_version" in by_id["2"].error_message
    assert by_id["1"].error_message == by_id["3"].error_message == ""


def test_an_undecodable_stream_message_ends_the_stream_after_answering_the_earlier_ones(
    hostile,
):
    _, channel = hostile
    call = channel.stream_stream(
        STREAM, response_deserializer=pb.ModelStreamInferResponse.FromString
    )
    messages = [
        infer_request("1").SerializeToString(),
        b"\xff\xff",
        infer_request("3").SerializeToString(),
    ]
    responses = call(iter(messages), timeout=10)
    answered = []
    with pytest.raises(grpc.RpcError) as raised:
        for response in responses:
            answered.append(response.infer_response.id)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert re.search(r"message 2 of the stream", raised.value.details())
    assert answered == ["1"]


def test_a_client_cancelling_a_stream_is_not_an_error_in_the_log(hostile):
    process, channel = hostile
    call = channel.stream_stream(
        STREAM,
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelStreamInferResponse.FromString,
    )
    for _ in range(5):
        responses = call(iter([infer_request(str(i)) for i in range(200)]), timeout=10)
        next(responses)
        responses.cancel()
    assert unary(channel, MODEL_INFER, VALID[MODEL_INFER])[0] == grpc.StatusCode.OK
    log = process.log()
    assert "level=error" not in log and "Traceback" not in log
