"""Load tester of the inference service: ``python -m serving.loadtest --model mlp ...``.

Modules, one concern each: ``settings`` (validated options), ``histogram`` (latency percentiles),
``schedule`` (open-loop arrivals), ``inputs`` (model signature and input rows), ``payloads``
(pre-serialized requests), ``calls`` (unary and stream callers), ``runner`` (the closed/open
load loop), ``server_metrics`` (the server's counters), ``check`` (ONNX Runtime comparison),
``report``, ``display``, ``plot`` and ``cli`` (the edge).
"""
