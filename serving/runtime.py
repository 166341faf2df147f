"""ONNX Runtime sessions: the execution provider is chosen once, by trying it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from serving.config import RuntimeSettings
from serving.errors import SettingsError

LOGGER = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


# The smallest useful graph, y = Identity(x) on float[1] (opset 17, IR 8), serialized
# once with onnx.helper (tests/serving/test_runtime.py rebuilds it and compares), so
# that the server needs nothing from the training stack to probe for CUDA.
PROBE_MODEL = (
    b'\x08\x08:;\n\x10\n\x01x\x12\x01y"\x08Identity\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08'
    b"\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00"
    b"\x10\x11"
)


def cuda_works() -> bool:
    """Whether a CUDA session can really be created here.

    onnxruntime-gpu lists the CUDA provider even on machines without a GPU or without
    the CUDA libraries; only creating a session tells, and ORT then silently falls back.
    """
    if CUDA not in ort.get_available_providers():
        return False
    options = ort.SessionOptions()
    options.log_severity_level = 4
    previous = 2
    ort.set_default_logger_severity(4)  # the failed library load is expected noise here
    try:
        session = ort.InferenceSession(PROBE_MODEL, options, providers=[CUDA, CPU])
    except Exception:  # any failure means: not usable
        return False
    finally:
        ort.set_default_logger_severity(previous)
    return CUDA in session.get_providers()


@dataclass(frozen=True)
class Runtime:
    """Creates sessions with one provider and thread settings for the whole server."""

    settings: RuntimeSettings
    provider: str

    @classmethod
    def create(cls, settings: RuntimeSettings) -> Runtime:
        if settings.device == "cpu":
            provider = CPU
        elif cuda_works():
            provider = CUDA
        elif settings.device == "cuda":
            raise SettingsError("device 'cuda' was requested but no CUDA session can be created")
        else:
            provider = CPU
        LOGGER.info(
            "event=runtime_selected provider=%s onnxruntime=%s intra_op_threads=%d",
            provider,
            ort.__version__,
            settings.intra_op_threads,
        )
        return cls(settings, provider)

    @property
    def version(self) -> str:
        return ort.__version__

    def session(self, path: Path) -> ort.InferenceSession:
        """Open ``path`` with graph optimizations on and the configured threads."""
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.settings.intra_op_threads
        options.inter_op_num_threads = self.settings.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning worker threads burn the cores the event loop needs between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers = [self.provider] if self.provider == CPU else [self.provider, CPU]
        return ort.InferenceSession(str(path), options, providers=providers)


def metadata(session: ort.InferenceSession) -> dict[str, str]:
    """The ONNX ``metadata_props`` of a session's model."""
    return dict(session.get_modelmeta().custom_metadata_map)
