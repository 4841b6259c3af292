"""trt_yolact: YOLACT instance segmentation, pruned, fused and deployed with ONNX and TensorRT."""

__version__ = "0.1.0"
