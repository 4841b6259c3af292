"""Synthetic shapes generator: determinism, geometry and COCO validity."""

from __future__ import annotations

import contextlib
import hashlib
import io
import itertools
import json
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from trt_yolact.data.shapes import main
from trt_yolact.data.synthetic import (
    MIN_VISIBLE_PIXELS,
    SHAPE_CLASSES,
    _unseen_background,
    generate_dataset,
    image_rng,
    rasterize,
    render_sample,
    sample_shape,
)

SIZE = 64
# pycocotools' decoder emits a harmless numpy-2 DeprecationWarning.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_class_order() -> None:
    assert SHAPE_CLASSES == ("circle", "rectangle", "triangle", "star", "ring")


def test_same_seed_same_files_and_other_seed_differs(tmp_path: Path) -> None:
    a = generate_dataset(tmp_path / "a", 3, 2, SIZE, seed=7)
    generate_dataset(tmp_path / "b", 3, 2, SIZE, seed=7)
    generate_dataset(tmp_path / "c", 3, 2, SIZE, seed=8)
    files_a, files_b = _files(tmp_path / "a"), _files(tmp_path / "b")
    assert set(files_a) == {
        "train/000000.png",
        "train/000001.png",
        "train/000002.png",
        "val/000000.png",
        "val/000001.png",
        "annotations/instances_train.json",
        "annotations/instances_val.json",
    }
    assert files_a == files_b
    files_c = _files(tmp_path / "c")
    assert files_a["train/000000.png"] != files_c["train/000000.png"]
    assert a["train_annotations"] == tmp_path / "a" / "annotations" / "instances_train.json"
    assert a["val_images"] == tmp_path / "a" / "val"


def test_image_reproducible_on_its_own(tmp_path: Path) -> None:
    generate_dataset(tmp_path, 3, 1, SIZE, seed=3)
    image, _ = render_sample(image_rng(3, "train", 2), SIZE)
    assert np.array_equal(cv2.imread(str(tmp_path / "train" / "000002.png")), image)
    other, _ = render_sample(image_rng(3, "val", 2), SIZE)
    assert other.shape != image.shape or not np.array_equal(other, image)


@pytest.mark.parametrize("seed", range(5))
def test_ring_mask_has_a_hole(seed: int) -> None:
    rng = np.random.default_rng(seed)
    spec = replace(sample_shape(rng, SHAPE_CLASSES.index("ring"), SIZE, SIZE), center=(32.0, 32.0))
    mask = rasterize(spec, SIZE, SIZE)
    assert not mask[32, 32], "ring centre must be outside the mask"
    ys, xs = np.nonzero(mask)
    assert xs.min() < 32 < xs.max() and ys.min() < 32 < ys.max(), "the band must surround the hole"
    # A circle of the same geometry has no hole.
    assert rasterize(replace(spec, class_index=SHAPE_CLASSES.index("circle")), SIZE, SIZE)[32, 32]


def test_rendered_rings_have_holes() -> None:
    found = 0
    for seed in range(40):
        _, instances = render_sample(np.random.default_rng(seed), SIZE)
        for cls, mask in instances:
            if SHAPE_CLASSES[cls] != "ring":
                continue
            filled = np.zeros(mask.shape, np.uint8)
            contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(filled, contours, -1, 1, -1)
            found += int(filled.sum() > mask.sum())  # some enclosed pixels are not part of the mask
    assert found >= 3


def test_masks_are_visible_parts() -> None:
    adjacent_pairs = 0
    kernel = np.ones((3, 3), np.uint8)
    for seed in range(40):
        image, instances = render_sample(np.random.default_rng(seed), SIZE)
        h, w = image.shape[:2]
        assert image.dtype == np.uint8 and image.shape[2] == 3
        assert 48 <= h <= SIZE and 48 <= w <= SIZE
        assert 1 <= len(instances) <= 6
        for cls, mask in instances:
            assert 0 <= cls < len(SHAPE_CLASSES)
            assert mask.dtype == bool and mask.shape == (h, w)
            assert mask.sum() >= MIN_VISIBLE_PIXELS
        for (_, m1), (_, m2) in itertools.combinations(instances, 2):
            assert not (m1 & m2).any(), "visible masks of different instances must be disjoint"
            adjacent_pairs += int((cv2.dilate(m1.astype(np.uint8), kernel).astype(bool) & m2).any())
    # Touching masks mean one object was drawn over another: occlusion really happens.
    assert adjacent_pairs >= 3


def test_coco_json_loads_and_bbox_matches_mask(tmp_path: Path) -> None:
    paths = generate_dataset(tmp_path, 4, 2, SIZE, seed=1)
    for split in ("train", "val"):
        raw = json.loads(paths[f"{split}_annotations"].read_text())
        assert [c["id"] for c in raw["categories"]] == [1, 2, 3, 4, 5]
        assert [c["name"] for c in raw["categories"]] == list(SHAPE_CLASSES)
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(paths[f"{split}_annotations"]))
        assert len(coco.getImgIds()) == (4 if split == "train" else 2)
        assert coco.getAnnIds(), "every image has at least one object"
        for img in coco.loadImgs(coco.getImgIds()):
            on_disk = cv2.imread(str(paths[f"{split}_images"] / img["file_name"]))
            assert on_disk.shape[:2] == (img["height"], img["width"])
        for ann in coco.loadAnns(coco.getAnnIds()):
            assert ann["iscrowd"] == 0
            assert isinstance(ann["segmentation"]["counts"], str)
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            x, y, w, h = ann["bbox"]
            assert (x, y, w, h) == (xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
            assert ann["area"] == mask.sum()


def test_cli_writes_dataset(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path / "ds"), "--train", "2", "--val", "1", "--size", "40", "--seed", "5"]) == 0
    assert len(list((tmp_path / "ds" / "train").glob("*.png"))) == 2
    assert (tmp_path / "ds" / "annotations" / "instances_val.json").is_file()
    assert not list(tmp_path.rglob("*.tmp")), "temporary files must be renamed away"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--train", "-1"], "--train"),
        (["--val", "-3"], "--val"),
        (["--size", "16"], "--size"),
        (["--backgrounds", "photos"], "--backgrounds"),
    ],
)
def test_cli_rejects_bad_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    try:  # a choice argparse checks exits; a number generate_dataset checks is one error line
        code = main(["--out", str(tmp_path / "ds"), *args])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    assert needle in capsys.readouterr().err


def test_cli_rejects_unwritable_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["--out", str(blocker / "ds"), "--train", "1", "--val", "0", "--size", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "not writable" in err[0]


def test_api_rejects_bad_args(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be >= 0"):
        generate_dataset(tmp_path, -1, 0, 64, 0)
    with pytest.raises(ValueError, match=">= 32"):
        generate_dataset(tmp_path, 1, 0, 31, 0)
    with pytest.raises(ValueError, match="backgrounds"):
        generate_dataset(tmp_path, 1, 0, 64, 0, backgrounds="photos")
    assert not list(tmp_path.rglob("*.png"))


def test_standard_images_are_pinned() -> None:
    # The published APs are measured on generated sets: a change in the standard generator would silently
    # change what those numbers mean, so one image's bytes are pinned.
    image, _ = render_sample(image_rng(3, "val", 1), SIZE)
    assert hashlib.sha256(image.tobytes()).hexdigest() == (
        "49aab3bafebbd4c3143439f17ec0913a4da5c835db5605ee5b415885b4fc493b"
    )


def test_unseen_backgrounds_differ_from_the_standard_families(tmp_path: Path) -> None:
    for seed in range(12):
        unseen = _unseen_background(np.random.default_rng(seed), SIZE, SIZE)
        assert unseen.shape == (SIZE, SIZE, 3) and unseen.min() >= 0 and unseen.max() <= 255
        # Every standard family is a blend of two colours (plus noise): per pixel, the colour lies on one
        # segment in RGB. The unseen families leave that line (many colours), or are thin-line lattices.
        flat = unseen.reshape(-1, 3) - unseen.reshape(-1, 3).mean(axis=0)
        singular = np.linalg.svd(flat, compute_uv=False)
        two_colour = singular[1] < 0.05 * singular[0]
        _, counts = np.unique(unseen.reshape(-1, 3), axis=0, return_counts=True)
        thin_lines = len(counts) == 2 and counts.min() < 0.4 * counts.sum()  # stripes/checkers are ~50/50
        assert not two_colour or thin_lines, f"seed {seed}: looks like a standard two-colour background"
    paths = generate_dataset(tmp_path, 0, 3, SIZE, seed=4, backgrounds="unseen")
    raw = json.loads(paths["val_annotations"].read_text())
    assert raw["info"]["backgrounds"] == "unseen" and raw["annotations"]
    standard, _ = render_sample(image_rng(4, "val", 0), SIZE)
    assert not np.array_equal(cv2.imread(str(paths["val_images"] / "000000.png")), standard)
