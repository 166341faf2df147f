"""Bearer-token auth (health stays open) over TLS."""

from __future__ import annotations

import subprocess

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from protos import grpc_service_pb2 as pb
from protos import grpc_service_pb2_grpc
from serving.client import Client

TOKEN = "s3cret-token"
ROW = np.zeros((1, 1, 8, 8), np.float32)


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return folder / "cert.pem", folder / "key.pem"


@pytest.fixture(scope="module")
def secured(model_repository, tls_files, tmp_path_factory):
    from serving_support import ServerProcess

    cert, key = tls_files
    process = ServerProcess(
        model_repository,
        ["--tls-cert", str(cert), "--tls-key", str(key)],
        env={"D2LSERVE_AUTH_TOKEN": TOKEN},  # the token from the environment, not argv
    )
    process.start(tmp_path_factory.mktemp("tls-logs"), tls_ca=cert)
    yield process, cert
    assert process.stop() == 0, process.log()


def test_right_token_is_served(secured):
    process, cert = secured
    with Client(process.target, token=TOKEN, tls_ca=cert) as client:
        assert client.predict("mlp", ROW).labels
        assert [m.name for m in client.list_models()] == ["mlp", "reg", "slow"]


@pytest.mark.parametrize("token", [None, "wrong"])
def test_missing_or_wrong_token_is_unauthenticated_on_every_api(secured, token):
    process, cert = secured
    with Client(process.target, token=token, tls_ca=cert) as client:
        for call in (lambda: client.predict("mlp", ROW), client.list_models):
            with pytest.raises(grpc.RpcError) as error:
                call()
            assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "authorization" in error.value.details()
        stub = grpc_service_pb2_grpc.GRPCInferenceServiceStub(client.channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.ServerLive(pb.ServerLiveRequest(), timeout=5, metadata=client.metadata)
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as error:
            list(
                stub.ModelStreamInfer(
                    iter([pb.ModelInferRequest()]), timeout=5, metadata=client.metadata
                )
            )
        assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_stays_open_without_a_token(secured):
    process, cert = secured
    with process.channel(cert) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=5
        )
    assert status.status == health_pb2.HealthCheckResponse.SERVING


def test_plaintext_client_cannot_talk_to_a_tls_server(secured):
    process, _ = secured
    with (
        Client(process.target, token=TOKEN, timeout=3) as client,
        pytest.raises(grpc.RpcError) as error,
    ):
        client.predict("mlp", ROW)
    assert error.value.code() == grpc.StatusCode.UNAVAILABLE
