"""The gRPC door: KServe v2 (``inference.GRPCInferenceService``) and our Predict API.

It only translates protobuf messages to and from the core's requests and answers.
"""
