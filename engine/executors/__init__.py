"""Executors that run the model graph: onnxruntime (CPU/CUDA) and TensorRT."""
