"""Reading images: a truncated JPEG or a PNG failing its checksum is refused with the reason, not decoded in
part (the decoder fills the missing rows, and detections on them would be made up)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from trt_yolact.errors import ImageError
from trt_yolact.inference.images import damage, read_image


def encoded(suffix: str) -> bytes:
    image = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    return cv2.imencode(suffix, image)[1].tobytes()


def test_whole_files_pass_and_damaged_ones_are_named(tmp_path):
    jpeg, png = encoded(".jpg"), encoded(".png")
    assert damage(jpeg) is None and damage(png) is None and damage(b"BM not checked") is None
    assert "truncated JPEG" in damage(jpeg[: len(jpeg) // 2])
    assert "truncated PNG" in damage(png[:-20])
    flipped = bytearray(png)
    flipped[60] ^= 0xFF  # inside the image data
    assert damage(bytes(flipped)) == "corrupt PNG (its IDAT chunk fails its checksum)"


def test_a_thumbnail_does_not_hide_a_truncated_jpeg():
    """EXIF thumbnails are whole JPEGs inside a header segment, end marker included."""
    jpeg = encoded(".jpg")
    app1 = b"\xff\xe1" + (len(jpeg) + 2).to_bytes(2, "big") + jpeg
    with_thumbnail = jpeg[:2] + app1 + jpeg[2:]
    assert damage(with_thumbnail) is None
    assert "truncated JPEG" in damage(with_thumbnail[:-2000])
    assert damage(jpeg + b"trailing data after the image") is None  # data after the end marker is allowed


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_read_image_refuses_a_damaged_file_in_one_line(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(encoded(suffix)[:-100])
    with pytest.raises(ImageError, match=rf"cut\{suffix}: (truncated|corrupt)") as info:
        read_image(path)
    assert "\n" not in str(info.value)
    whole = tmp_path / f"whole{suffix}"
    whole.write_bytes(encoded(suffix))
    assert read_image(whole).shape == (60, 80, 3)
