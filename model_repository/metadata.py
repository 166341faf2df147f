"""Keys of the ONNX ``metadata_props`` that training writes and serving reads.

Values are strings; the ones marked JSON hold JSON documents.
"""

KIND = "kind"  # "linear" | "softmax" | "mlp"
TASK = "task"  # "classification" | "regression"
LABELS = "labels"  # JSON list of class names in output order; "[]" for regression
DATASET = "dataset"  # "fashion-mnist" | "digits" | "synthetic" | "csv"
INPUT_LAYOUT = "input_layout"  # LAYOUT_NCHW for images, LAYOUT_NF (rows x features) for tables
INPUT_RANGE = "input_range"  # JSON [low, high] of raw input values, or "null"
FEATURE_NAMES = "feature_names"  # JSON list for tabular inputs, "[]" for images
TRAINING_METRICS = "training_metrics"  # JSON object of final metrics
LIBRARY_VERSIONS = "library_versions"  # JSON object: torch, onnx, onnxruntime, python
CREATED_AT = "created_at"  # ISO 8601 UTC
GIT_COMMIT = "git_commit"  # commit of the training code, "" when unknown

LAYOUT_NCHW = "NCHW"
LAYOUT_NF = "NF"
LAYOUTS = (LAYOUT_NCHW, LAYOUT_NF)

REQUIRED = (KIND, TASK, LABELS, DATASET, INPUT_LAYOUT, INPUT_RANGE, TRAINING_METRICS)

TASK_CLASSIFICATION = "classification"
TASK_REGRESSION = "regression"

# Tensor names in every exported graph.
INPUT_NAME = "input"
LOGITS_NAME = "logits"
PROBABILITIES_NAME = "probabilities"
PREDICTION_NAME = "prediction"


def output_names(task: str) -> tuple[str, ...]:
    """The outputs every graph our trainer exports has for ``task``."""
    if task == TASK_CLASSIFICATION:
        return (LOGITS_NAME, PROBABILITIES_NAME)
    return (PREDICTION_NAME,)
