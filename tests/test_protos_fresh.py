"""The committed gRPC stubs must match their .proto sources."""

from pathlib import Path

from protos.generate import PROTO_DIR, generate


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    protos = generate(tmp_path)
    generated = sorted((tmp_path / "protos").iterdir())
    assert len(generated) == 3 * len(protos)  # _pb2.py, _pb2.pyi, _pb2_grpc.py each
    for fresh in generated:
        committed = PROTO_DIR / fresh.name
        assert committed.exists(), f"{fresh.name} is not committed; run python -m protos.generate"
        assert committed.read_bytes() == fresh.read_bytes(), (
            f"protos/{fresh.name} is stale; run python -m protos.generate"
        )
