"""Detections -> numbers: COCO AP, agreement with the PyTorch reference, speed, size and memory."""
