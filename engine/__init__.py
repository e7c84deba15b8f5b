"""Model loading, the ONNX model graph with paged-KV I/O, and the executors that run it."""
