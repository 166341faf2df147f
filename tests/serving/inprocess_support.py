"""A model version served in process: a real Repository, Batcher and Corridor around a
Python function, so a test knows exactly what is queued and running."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from model_repository.datatypes import BY_WIRE
from serving.core.batcher import Batcher, BatchingPolicy
from serving.core.inference import ChosenOutput
from serving.core.repository import READY, Model, ModelVersion, Repository
from serving.core.tensors import RequestSchema, TensorSpec

FEATURES = 4


class HeldModel:
    """Doubles its input; blocks while ``release`` is clear."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.release.set()
        self.calls = 0

    def __call__(self, batch: list[np.ndarray]) -> list[np.ndarray]:
        self.calls += 1
        if not self.release.wait(10):
            raise RuntimeError("the test never released the model")
        return [batch[0] * 2]


def add_version(
    repository: Repository,
    name: str,
    run: HeldModel,
    policy: BatchingPolicy | None = None,
) -> ModelVersion:
    fp32 = BY_WIRE["FP32"]
    version = ModelVersion(
        name=name,
        version=1,
        path=Path(name),
        policy=policy or BatchingPolicy(enabled=False, max_batch_size=64),
        metrics=repository.metrics.for_version(name, 1),
        state=READY,
        schema=RequestSchema(
            model=f"model '{name}' v1",
            inputs=(TensorSpec("input", fp32, (-1, FEATURES)),),
            batched=True,
            max_rows=64,
            finite=True,
        ),
        outputs=(TensorSpec("output", fp32, (-1, FEATURES)),),
        output_index={"output": 0},
        all_outputs=[ChosenOutput("output", 0, "FP32", 0)],
    )
    version.batcher = Batcher(
        run,
        version.policy,
        name=version.description,
        metrics=version.metrics,
        statistics=version.statistics,
    )
    version.batcher.start()
    model = Model(name=name, versions={1: version}, default=version)
    repository.models[name] = model
    return version
