"""Images in, detections out: pre-processing, any runner, batched post-processing, results and overlays."""
