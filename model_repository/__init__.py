"""The model repository: the on-disk contract between training and serving.

Layout (Triton-compatible)::

    models/<name>/config.pbtxt        ModelConfig in protobuf text format
    models/<name>/<version>/model.onnx
    models/<name>/<version>/metrics.json, curves.png, predictions.png

Versions are positive integers. A version directory appears only complete: writers
build it under a hidden temporary name inside ``models/`` and rename it into place,
so readers skip every entry whose name is not a positive integer.
"""
