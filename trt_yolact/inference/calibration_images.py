"""The images INT8 calibration runs on, preprocessed exactly as at inference.

``--calib`` names an image folder or a COCO set (``ANN.json:IMAGES``); at most ``--calib-images`` of its
images are used, sampled with a fixed seed. Models of the synthetic shapes dataset (the embedded demo models)
calibrate by default on shapes images generated with a seed that training and the test sets never use, and
are scored for INT8 sensitivity on another such set.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..config import Int8Options, YolactConfig
from ..data.coco import load_coco_json
from ..data.synthetic import SHAPE_CLASSES, image_rng, render_sample
from ..deploy.artifacts import Int8Setup
from ..deploy.calibration import MIN_CALIBRATION_IMAGES, CalibrationSettings
from ..errors import CalibrationError, ImageError
from ..model.checkpoint import ModelSource
from .images import expand_image_paths, read_image
from .preprocess import preprocess

# Seeds of the generated shapes sets: training uses 0, the held-out test sets 12345 and 777.
SHAPES_CALIBRATION_SEED = 2718
SHAPES_SENSITIVITY_SEED = 3141
SHAPES_IMAGE_SIZE = 256
SAMPLING_SEED = 0  # which images of a larger --calib source are used


def _preprocessing_key(config: YolactConfig) -> dict:
    return {"size": config.max_size, "normalization": config.normalization, "mean": config.mean, "std": config.std}


class ShapesImages:
    """Generated shapes images (the generator's ``val`` split of ``seed``)."""

    def __init__(self, config: YolactConfig, count: int, seed: int = SHAPES_CALIBRATION_SEED):
        self.config, self.seed, self.count = config, seed, count
        self._images: list[np.ndarray] = []  # rendered on the first pass, kept for the next (small images)
        key = {"shapes": seed, "count": count, "size": SHAPES_IMAGE_SIZE, "version": __version__}
        self.fingerprint = _digest(json.dumps({**key, **_preprocessing_key(config)}, sort_keys=True).encode())

    def __len__(self) -> int:
        return self.count

    def image(self, index: int) -> np.ndarray:
        while len(self._images) <= index:
            self._images.append(render_sample(image_rng(self.seed, "val", len(self._images)), SHAPES_IMAGE_SIZE)[0])
        return self._images[index]

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for first in range(0, self.count, batch_size):
            images = [self.image(i) for i in range(first, min(first + batch_size, self.count))]
            yield preprocess(images, self.config)[0].numpy()


class ImageFiles:
    """Image files, read again for every pass (nothing but their paths is kept between passes)."""

    def __init__(self, paths: Sequence[Path], config: YolactConfig, fingerprint: str):
        self.paths, self.config, self.fingerprint = list(paths), config, fingerprint

    def __len__(self) -> int:
        return len(self.paths)

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        for first in range(0, len(self.paths), batch_size):
            images = [read_image(path) for path in self.paths[first : first + batch_size]]
            yield preprocess(images, self.config)[0].numpy()


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def source_images(spec: str) -> list[Path]:
    """The image files a ``--calib`` value names: a folder's images, or those a COCO annotation file lists
    (``ANN.json:IMAGES``)."""
    ann, sep, folder = spec.rpartition(":") if spec.count(":") else ("", "", spec)
    if sep and ann.lower().endswith(".json"):  # checked by the loader every command shares
        return [Path(folder) / image["file_name"] for image in load_coco_json(ann)["images"]]
    if not Path(spec).is_dir():
        raise CalibrationError(f"--calib {spec} is neither an image folder nor ANN.json:IMAGES")
    return expand_image_paths([spec])


def image_files(spec: str, config: YolactConfig, count: int) -> ImageFiles:
    """At most ``count`` readable images of ``spec``, sampled with a fixed seed; unreadable ones are skipped
    and counted on stderr, and fewer than the minimum readable is an error."""
    candidates = source_images(spec)
    order = np.random.default_rng(SAMPLING_SEED).permutation(len(candidates))
    chosen, skipped, hasher = [], [], hashlib.sha256(json.dumps(_preprocessing_key(config)).encode())
    for index in order:
        if len(chosen) == count:
            break
        path = candidates[int(index)]
        try:
            read_image(path)
        except (ImageError, OSError) as exc:
            skipped.append(str(exc))
            continue
        chosen.append(path)
        hasher.update(hashlib.sha256(path.read_bytes()).digest())
    if skipped:
        print(f"warning: skipped {len(skipped)} unreadable calibration images (first: {skipped[0]})", file=sys.stderr)
    if len(chosen) < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(
            f"--calib {spec} has {len(chosen)} readable images; calibration needs at least "
            f"{MIN_CALIBRATION_IMAGES} (a few hundred like the ones the model will see)"
        )
    return ImageFiles(sorted(chosen), config, hasher.hexdigest())


def is_shapes_model(config: YolactConfig) -> bool:
    """A model of the synthetic shapes dataset (the embedded demo models are)."""
    return tuple(config.class_names) == SHAPE_CLASSES


@dataclass(frozen=True)
class CalibrationChoice:
    """The calibration images of a model, and where they came from (for reports)."""

    data: ShapesImages | ImageFiles
    description: str


def calibration_images(options: Int8Options, config: YolactConfig) -> CalibrationChoice:
    """The calibration set ``options`` name for a model of ``config``."""
    if options.calib_images < MIN_CALIBRATION_IMAGES:
        raise CalibrationError(f"--calib-images must be at least {MIN_CALIBRATION_IMAGES}, got {options.calib_images}")
    if options.calib:
        data = image_files(options.calib, config, options.calib_images)
        return CalibrationChoice(data, f"{len(data)} images of {options.calib}")
    if is_shapes_model(config):
        data = ShapesImages(config, options.calib_images)
        return CalibrationChoice(data, f"{len(data)} generated shapes images (seed {SHAPES_CALIBRATION_SEED})")
    raise CalibrationError(
        "INT8 needs calibration images like the ones the model will see: pass --calib DIR or --calib ANN.json:IMAGES"
    )


def int8_setup(options: Int8Options, source: ModelSource, exclude: Sequence[str] | None = None) -> Int8Setup:
    """What the artifact chain of ``source`` calibrates its INT8 exports on."""
    settings = CalibrationSettings(options.calib_method, options.calib_percentile, options.calib_batch)
    choice = calibration_images(options, source.config)
    exclude = tuple(options.exclude if exclude is None else exclude)
    return Int8Setup(choice.data, settings, exclude, description=choice.description)
