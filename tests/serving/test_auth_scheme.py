"""Bearer auth details: the scheme is case-insensitive, a token on argv is warned about."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from serving_support import ServerProcess

from serving.client import predict_request

TOKEN = "t0ken-value"
PREDICT = "/d2lserve.v1.PredictionService/Predict"
BODY = predict_request("mlp", np.zeros((1, 1, 8, 8), np.float32)).SerializeToString()


@pytest.fixture(scope="module")
def env_token_server(model_repository, tmp_path_factory):
    process = ServerProcess(model_repository, env={"D2LSERVE_AUTH_TOKEN": TOKEN})
    process.start(tmp_path_factory.mktemp("auth-scheme-logs"))
    yield process
    assert process.stop() == 0, process.log()
    assert "auth_token_on_command_line" not in process.log()


def call(process, authorization: str | None) -> grpc.StatusCode:
    metadata = [] if authorization is None else [("authorization", authorization)]
    with process.channel() as channel:
        try:
            channel.unary_unary(PREDICT)(BODY, metadata=metadata, timeout=10)
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (f"Bearer {TOKEN}", grpc.StatusCode.OK),
        (f"bearer {TOKEN}", grpc.StatusCode.OK),  # RFC 6750: the scheme is case-insensitive
        (f"BEARER {TOKEN}", grpc.StatusCode.OK),
        (f"Basic {TOKEN}", grpc.StatusCode.UNAUTHENTICATED),
        (f"Bearer {TOKEN.upper()}", grpc.StatusCode.UNAUTHENTICATED),  # the token is not
        (TOKEN, grpc.StatusCode.UNAUTHENTICATED),
        (None, grpc.StatusCode.UNAUTHENTICATED),
    ],
)
def test_the_bearer_scheme_is_case_insensitive_and_the_token_is_not(
    env_token_server, authorization, code
):
    assert call(env_token_server, authorization) == code


def test_a_token_on_the_command_line_is_warned_about(model_repository, start_server):
    process = start_server(model_repository, "--auth-token", TOKEN)
    assert call(process, f"Bearer {TOKEN}") == grpc.StatusCode.OK
    assert "level=warning" in process.log().split("event=auth_token_on_command_line")[0][-80:]
