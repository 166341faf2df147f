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


# The smallest model a session can be created for: y = Identity(x), x and y float32 [1],
# opset 17, IR version 8. Serialized once with onnx.helper (tests/deploy/test_packaging.py
# rebuilds it and compares) so that the server does not need the onnx package, which belongs
# to the training stack.
PROBE_MODEL = bytes.fromhex(
    "08083a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a0a08080112040a0208"
    "01620f0a0179120a0a08080112040a02080142040a001011"
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
