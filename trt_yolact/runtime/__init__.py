"""Runners: open an artifact (a model in memory, an ONNX file, a TensorRT engine) and run it; never build one."""
