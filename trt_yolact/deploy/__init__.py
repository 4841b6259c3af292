"""Artifacts made from a model: ONNX (FP32, FP16, with in-graph post-processing) and TensorRT engines.

``onnx_format`` and ``engine_format`` describe the files; the runtime reads those two and nothing else here.
"""
