"""Drawing detections: masks in class colours with transparency, boxes, labels and scores."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ..structures import Detections


def class_color(class_index: int) -> tuple[int, int, int]:
    """A stable, well-spread BGR colour per class (golden-ratio hues)."""
    hue = int((class_index * 0.618033988749895 % 1.0) * 180)
    hsv = np.uint8([[[hue, 200, 255]]])
    b, g, r = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0]
    return int(b), int(g), int(r)


def draw_detections(
    image: np.ndarray,
    detections: Detections,
    class_names: Sequence[str],
    alpha: float = 0.45,
    fps: float | None = None,
) -> np.ndarray:
    """Return a copy of a BGR image with the detections drawn (low-res masks are resized first)."""
    canvas = image.copy()
    height, width = canvas.shape[:2]
    masks = detections.masks.detach().cpu()
    masks_np = (masks if masks.dtype == torch.bool else masks.float()).numpy()
    boxes = detections.boxes.detach().cpu().numpy()
    classes = detections.classes.detach().cpu().numpy()
    scores = detections.scores.detach().cpu().numpy()
    # Draw the least confident first so that the best detections end on top.
    for i in reversed(range(len(scores))):
        color = np.array(class_color(int(classes[i])), dtype=np.float32)
        mask = masks_np[i]
        if mask.shape != (height, width):
            mask = cv2.resize(mask.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR) > 0.5
        mask = mask.astype(bool)
        canvas[mask] = (canvas[mask] * (1 - alpha) + color * alpha).astype(np.uint8)
    font = cv2.FONT_HERSHEY_DUPLEX
    for i in range(len(scores)):
        color = class_color(int(classes[i]))
        x1, y1, x2, y2 = (int(v) for v in boxes[i])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 1)
        name = class_names[int(classes[i])] if int(classes[i]) < len(class_names) else str(int(classes[i]))
        label = f"{name} {scores[i]:.2f}"
        (tw, th), baseline = cv2.getTextSize(label, font, 0.45, 1)
        top = max(y1 - th - baseline - 2, 0)
        cv2.rectangle(canvas, (x1, top), (x1 + tw + 2, top + th + baseline + 2), color, -1)
        cv2.putText(canvas, label, (x1 + 1, top + th + 1), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    if fps is not None:
        cv2.putText(canvas, f"{fps:.1f} FPS", (8, 24), font, 0.7, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(canvas, f"{fps:.1f} FPS", (8, 24), font, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
    return canvas
