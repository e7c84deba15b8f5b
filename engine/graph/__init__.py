"""The pieces of the model graph: ONNX writer, per-token layers, paged attention."""
