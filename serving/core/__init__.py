"""The corridor every inference request walks, whichever door it came in by.

admit (admission) -> resolve the version (repository) -> validate (tensors) -> batch
(batcher) -> run (runtime) -> record (statistics, metrics). Nothing here knows a wire
format: the doors (``serving.grpc_api``, ``serving.http_api``) translate theirs.
"""
