"""Model configurations as immutable dataclasses.

The four released YOLACT configurations are reproduced exactly; custom models are described by a YAML or
JSON file with the same fields. Nothing here is global or mutable: a config is passed to whatever needs it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, first_line

COCO_CLASSES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)
# COCO's category ids of the 80 classes above (the ids have gaps).
COCO_CATEGORY_IDS = (
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    10,
    11,
    13,
    14,
    15,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23,
    24,
    25,
    27,
    28,
    31,
    32,
    33,
    34,
    35,
    36,
    37,
    38,
    39,
    40,
    41,
    42,
    43,
    44,
    46,
    47,
    48,
    49,
    50,
    51,
    52,
    53,
    54,
    55,
    56,
    57,
    58,
    59,
    60,
    61,
    62,
    63,
    64,
    65,
    67,
    70,
    72,
    73,
    74,
    75,
    76,
    77,
    78,
    79,
    80,
    81,
    82,
    84,
    85,
    86,
    87,
    88,
    89,
    90,
)

# ImageNet statistics in BGR order, as the released models were trained with.
MEAN_BGR = (103.94, 116.78, 123.68)
STD_BGR = (57.38, 57.12, 58.40)

BACKBONE_KINDS = ("resnet", "darknet")
# Where a model runs and in which precision (every deployed form is checked against torch fp32).
BACKENDS = ("torch", "onnxruntime", "tensorrt")
PRECISIONS = ("fp32", "fp16", "int8")
INT8_BACKENDS = ("onnxruntime", "tensorrt")  # INT8 is Q/DQ ONNX: ONNX Runtime runs it, TensorRT builds it
# Where detections are selected: by torch on the runner's device, or inside the exported graph (which only the
# deployed backends run; in INT8, only TensorRT's flavour has a graph export: ONNX Runtime's holds the network).
POSTPROCESS_PLACES = ("host", "graph")
GRAPH_POSTPROCESS_BACKENDS = ("onnxruntime", "tensorrt")
DEFAULT_CACHE = "export/cache"
# The demo models shipped inside the package (trt_yolact/weights/NAME.pth); the first is the default model.
EMBEDDED_MODELS = ("yolact_shapes", "yolact_shapes_pruned", "yolact_shapes_slim")
DEFAULT_MODEL = EMBEDDED_MODELS[0]  # where the ONNX files and engines a backend needs for a checkpoint are kept
INPUT_NORMALIZATIONS = ("mean_std", "scale")
# Input sides a model and the commands accept: below, the FPN's coarsest levels vanish; above, one image's
# activations alone outgrow a machine's memory (the released models run at 550 and 700).
MIN_IMAGE_SIZE = 32
MAX_IMAGE_SIZE = 4096
# The most images per call a command takes (a fixed export batch): beyond it the inputs alone need gigabytes.
MAX_BATCH = 256


@dataclass(frozen=True)
class BackboneConfig:
    """Backbone layout.

    ``kind="resnet"``: bottleneck stages of ``layers[i]`` blocks; stage ``i`` outputs ``4 * widths[i]``
    channels. ``kind="darknet"``: a stride-2 conv then ``layers[i]`` residual blocks per stage; stage ``i``
    outputs ``2 * widths[i]`` channels. Block-internal widths are only defaults: a checkpoint's tensor
    shapes override them (pruned models).
    """

    kind: str = "resnet"
    layers: tuple[int, ...] = (3, 4, 23, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512)
    stem_channels: int = 64
    selected_layers: tuple[int, ...] = (1, 2, 3)

    @property
    def expansion(self) -> int:
        return 4 if self.kind == "resnet" else 2

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.expansion * w for w in self.widths)


@dataclass(frozen=True)
class YolactConfig:
    """Everything that defines a YOLACT network and its input transform."""

    name: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    max_size: int = 550
    class_names: tuple[str, ...] = COCO_CLASSES
    # Dataset category id of each class (COCO ids for COCO models); used for COCO-format results.
    category_ids: tuple[int, ...] = COCO_CATEGORY_IDS
    fpn_channels: int = 256
    fpn_downsample: int = 2
    proto_channels: int = 256
    mask_dim: int = 32
    head_channels: int = 256
    pred_scales: tuple[tuple[int, ...], ...] = ((24,), (48,), (96,), (192,), (384,))
    pred_aspect_ratios: tuple[float, ...] = (1.0, 0.5, 2.0)
    use_pixel_scales: bool = True
    preapply_sqrt: bool = False
    use_square_anchors: bool = True
    normalization: str = "mean_std"
    mean: tuple[float, float, float] = MEAN_BGR
    std: tuple[float, float, float] = STD_BGR

    def __post_init__(self) -> None:
        if self.backbone.kind not in BACKBONE_KINDS:
            raise ConfigError(f"backbone.kind must be one of {BACKBONE_KINDS}, got {self.backbone.kind!r}")
        if len(self.backbone.layers) != len(self.backbone.widths):
            raise ConfigError("backbone.layers and backbone.widths must have the same length")
        if any(not 0 <= i < len(self.backbone.layers) for i in self.backbone.selected_layers):
            raise ConfigError(f"backbone.selected_layers {self.backbone.selected_layers} out of range")
        if self.normalization not in INPUT_NORMALIZATIONS:
            raise ConfigError(f"normalization must be one of {INPUT_NORMALIZATIONS}")
        if len(self.category_ids) != len(self.class_names):
            raise ConfigError(f"{len(self.class_names)} class_names but {len(self.category_ids)} category_ids")
        if len(self.pred_scales) != self.num_levels:
            raise ConfigError(
                f"pred_scales has {len(self.pred_scales)} levels, the FPN has {self.num_levels} "
                f"({len(self.backbone.selected_layers)} backbone levels + {self.fpn_downsample} downsamples)"
            )
        if not MIN_IMAGE_SIZE <= self.max_size <= MAX_IMAGE_SIZE:
            raise ConfigError(f"max_size must be from {MIN_IMAGE_SIZE} to {MAX_IMAGE_SIZE}, got {self.max_size}")
        problem = _value_problem(self)
        if problem:
            raise ConfigError(problem)

    @property
    def num_classes(self) -> int:
        """Number of classes including the background class at index 0."""
        return len(self.class_names) + 1

    @property
    def num_levels(self) -> int:
        return len(self.backbone.selected_layers) + self.fpn_downsample

    @property
    def priors_per_location(self) -> int:
        return len(self.pred_scales[0]) * len(self.pred_aspect_ratios)

    def replace(self, **changes: Any) -> YolactConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> YolactConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(data) - known))
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; known fields: {sorted(known)}")
        if "name" not in data:
            raise ConfigError("a config needs a 'name'")
        values = {k: _tuplify(v) for k, v in data.items()}
        backbone = values.pop("backbone", {})
        if isinstance(backbone, dict):
            bb_known = {f.name for f in dataclasses.fields(BackboneConfig)}
            bb_unknown = sorted(map(str, set(backbone) - bb_known))
            if bb_unknown:
                raise ConfigError(f"unknown backbone fields {bb_unknown}; known: {sorted(bb_known)}")
            backbone = {k: _tuplify(v) for k, v in backbone.items()}
            _check_types(BackboneConfig(), backbone, "backbone.")
            backbone = BackboneConfig(**backbone)
        elif not isinstance(backbone, BackboneConfig):
            raise ConfigError(f"config field 'backbone' must be a mapping of backbone fields, got {backbone!r}")
        _check_types(SHAPES_CONFIG, values)
        return cls(backbone=backbone, **values)


def _value_problem(config: YolactConfig) -> str | None:
    """A field whose value no model can have (a count below 1, a ratio or scale not above 0, a zero std,
    a category id used twice), or None."""
    counts = {
        "backbone.layers": config.backbone.layers,
        "backbone.widths": config.backbone.widths,
        "backbone.stem_channels": (config.backbone.stem_channels,),
        "fpn_channels": (config.fpn_channels,),
        "proto_channels": (config.proto_channels,),
        "head_channels": (config.head_channels,),
        "mask_dim": (config.mask_dim,),
        "class_names": (len(config.class_names),),
    }
    for name, values in counts.items():
        if not values or min(values) < 1:
            return f"config field '{name}' must be at least 1, got {values if len(values) > 1 else values[0]}"
    if config.fpn_downsample < 0:
        return f"config field 'fpn_downsample' must be 0 or more, got {config.fpn_downsample}"
    positive = {
        "pred_aspect_ratios": config.pred_aspect_ratios,
        "pred_scales": tuple(s for level in config.pred_scales for s in level),
        "std": config.std,
    }
    for name, values in positive.items():
        if not values or not all(math.isfinite(v) and v > 0 for v in values):
            return f"config field '{name}' must hold numbers above 0, got {list(values)}"
    if len({len(level) for level in config.pred_scales}) > 1:
        return "config field 'pred_scales' must have the same number of scales on every level"
    if not all(math.isfinite(v) for v in config.mean):
        return f"config field 'mean' must hold finite numbers, got {list(config.mean)}"
    repeated = sorted({i for i in config.category_ids if config.category_ids.count(i) > 1})
    if repeated:
        return f"config field 'category_ids' must name each class once; repeated: {repeated}"
    return None


def _check_types(example: Any, values: dict[str, Any], prefix: str = "") -> None:
    """Each value of the same kind as ``example``'s field of that name (int, float, bool, str, or a list of
    such), so a config file's typo is one clear error, not a failure deep inside the model."""
    for name, value in values.items():
        wanted = "" if name == "name" else getattr(example, name)
        if not _same_kind(value, wanted):
            raise ConfigError(f"config field '{prefix}{name}' must be {_kind(wanted)}, got {value!r}")


def _kind(example: Any) -> str:
    """``256`` -> "an integer", ``((12,),)`` -> "a list of lists of integers"."""
    if isinstance(example, tuple):
        return f"a list of {_plural(example[0])}" if example else "a list"
    names = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string"}
    return names.get(type(example), f"a {type(example).__name__}")


def _plural(example: Any) -> str:
    if isinstance(example, tuple):
        return f"lists of {_plural(example[0])}" if example else "lists"
    names = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}
    return names.get(type(example), f"{type(example).__name__}s")


def _same_kind(value: Any, example: Any) -> bool:
    if isinstance(example, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(example, bool)
    if isinstance(example, float):
        return isinstance(value, (int, float))
    if isinstance(example, tuple):
        return isinstance(value, tuple) and (not example or all(_same_kind(v, example[0]) for v in value))
    return isinstance(value, type(example))


def _tuplify(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    return value


RESNET101 = BackboneConfig(kind="resnet", layers=(3, 4, 23, 3))
RESNET50 = BackboneConfig(kind="resnet", layers=(3, 4, 6, 3))
DARKNET53 = BackboneConfig(
    kind="darknet",
    layers=(1, 2, 8, 8, 4),
    widths=(32, 64, 128, 256, 512),
    stem_channels=32,
    selected_layers=(2, 3, 4),
)
# The original scales anchor sizes to the larger input and truncates to int.
_IM700_SCALES = tuple((int(s[0] / 550 * 700),) for s in ((24,), (48,), (96,), (192,), (384,)))

OFFICIAL_CONFIGS: dict[str, YolactConfig] = {
    "yolact_base": YolactConfig(name="yolact_base", backbone=RESNET101),
    "yolact_resnet50": YolactConfig(name="yolact_resnet50", backbone=RESNET50),
    "yolact_darknet53": YolactConfig(name="yolact_darknet53", backbone=DARKNET53, normalization="scale"),
    "yolact_im700": YolactConfig(name="yolact_im700", backbone=RESNET101, max_size=700, pred_scales=_IM700_SCALES),
}


# The small model trained here on the synthetic shapes dataset (the embedded demo model): the same family
# as the released ones (bottleneck ResNet with batch norm, FPN, protonet, shared head), sized for a CPU and
# for the package's 8 MB limit. Like ResNet-101 it keeps most of its compute in bottleneck-internal channels,
# the ones network slimming prunes (docs/MODEL_CARD.md tells why the architecture was chosen).
SHAPES_CONFIG = YolactConfig(
    name="yolact_shapes",
    backbone=BackboneConfig(kind="resnet", layers=(1, 3, 5, 1), widths=(32, 80, 160, 160), stem_channels=32),
    max_size=256,
    class_names=("circle", "rectangle", "triangle", "star", "ring"),
    category_ids=(1, 2, 3, 4, 5),
    fpn_channels=32,
    proto_channels=32,
    head_channels=32,
    pred_scales=((12,), (24,), (48,), (96,), (192,)),
)
PRESET_CONFIGS: dict[str, YolactConfig] = {**OFFICIAL_CONFIGS, SHAPES_CONFIG.name: SHAPES_CONFIG}


def config_names() -> list[str]:
    return sorted(PRESET_CONFIGS)


def load_config_file(path: str | Path) -> YolactConfig:
    """Read a custom config from a ``.yaml``/``.yml``/``.json`` file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse failure becomes one clear message
        raise ConfigError(f"cannot parse config file {path}: {first_line(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of config fields")
    return YolactConfig.from_dict(data)


def get_config(name_or_path: str | Path) -> YolactConfig:
    """A config by preset name (``yolact_base``, ``yolact_shapes``) or from a YAML/JSON file."""
    key = str(name_or_path)
    if key in PRESET_CONFIGS:
        return PRESET_CONFIGS[key]
    if key.endswith("_config") and key[: -len("_config")] in OFFICIAL_CONFIGS:
        return OFFICIAL_CONFIGS[key[: -len("_config")]]
    if Path(key).suffix.lower() in (".yaml", ".yml", ".json"):
        return load_config_file(key)
    raise ConfigError(f"unknown config {key!r}: use one of {config_names()} or a .yaml/.json file")


def infer_config_name(checkpoint_path: str | Path) -> str | None:
    """``yolact_base_54_800000.pth`` -> ``yolact_base``; None when the name matches no official config."""
    stem = Path(checkpoint_path).stem
    match = re.match(r"^(.*?)_\d+_\d+(?:_interrupt)?$", stem)
    candidate = match.group(1) if match else stem
    # Longest official name that prefixes the file name ("yolact_im700" before "yolact").
    for name in sorted(OFFICIAL_CONFIGS, key=len, reverse=True):
        if candidate == name or candidate.startswith(name + "_"):
            return name
    return None


@dataclass(frozen=True)
class PostprocessConfig:
    """Thresholds and limits of the post-processing (host or in-graph), the original's defaults."""

    conf_threshold: float = 0.05  # a prior is a candidate when its best class beats this
    nms_threshold: float = 0.5
    top_k: int = 200  # candidates per class entering Fast NMS
    max_detections: int = 100  # per image, after NMS
    cross_class_nms: bool = False  # one NMS over all classes instead of per class
    score_threshold: float = 0.0  # final filter on detection scores (the original's postprocess)
    crop_masks: bool = True
    full_resolution_masks: bool = True  # False: low-resolution mask probabilities, faster


@dataclass(frozen=True)
class Int8Options:
    """How INT8 artifacts are calibrated and which layers they keep in higher precision."""

    calib: str | None = None  # an image folder or ANN.json:IMAGES; None: the embedded demo models' own set
    calib_images: int = 256  # sampled with a fixed seed when the source has more
    calib_method: str = "minmax"  # or entropy, percentile; clipping nothing cost the least AP (benchmarks/RESULTS.md)
    calib_percentile: float = 99.99
    calib_batch: int = 4  # images per calibration run: what bounds its memory
    exclude: tuple[str, ...] = ()  # module path globs or block names kept in higher precision
    max_ap_drop: float | None = None  # leave the most sensitive blocks unquantized until within this
    sensitivity_set: str | None = None  # ANN.json:IMAGES scored for sensitivity; None: generated shapes images
    sensitivity_images: int = 200


@dataclass(frozen=True)
class RuntimeOptions:
    """Where and how a model runs."""

    backend: str | None = None  # None: torch for a checkpoint, the backend a deployed file's kind implies
    precision: str | None = None  # None: fp32 for a checkpoint, a deployed file's own
    device: str | None = None  # None: cpu (cuda for TensorRT)
    config: str | os.PathLike | None = None  # where the file does not name its model config
    cache_dir: str | os.PathLike = DEFAULT_CACHE  # ONNX files and engines made for a checkpoint
    max_batch: int = 8  # the largest batch of a TensorRT engine made for a checkpoint
    int8: Int8Options = Int8Options()  # for INT8 artifacts made for a checkpoint
    postprocess: str = "host"  # "graph": a checkpoint runs as its export with the post-processing in the graph

    def device_for(self, backend: str) -> str:
        return self.device or ("cuda" if backend == "tensorrt" else "cpu")


# ---------------------------------------------------------------------------------------------- priors
def make_priors(config: YolactConfig, feature_sizes: list[tuple[int, int]]) -> np.ndarray:
    """Prior boxes ``(cx, cy, w, h)`` relative to the input, ordered level, row, column, scale, ratio.

    Reproduces the original exactly, quirks included: with ``use_square_anchors`` the height is set to the
    width (the aspect ratio only changes the size), and pixel scales are relative to ``max_size``. The
    arithmetic is done in float64 like Python's, then stored as float32.
    """
    rows = []
    for (conv_h, conv_w), scales in zip(feature_sizes, config.pred_scales):
        ys, xs = np.meshgrid(np.arange(conv_h, dtype=np.float64), np.arange(conv_w, dtype=np.float64), indexing="ij")
        centers_x = ((xs + 0.5) / conv_w).reshape(-1, 1)
        centers_y = ((ys + 0.5) / conv_h).reshape(-1, 1)
        sizes = []
        for scale in scales:
            for ratio in config.pred_aspect_ratios:
                ratio = ratio if config.preapply_sqrt else math.sqrt(ratio)
                if config.use_pixel_scales:
                    w = scale * ratio / config.max_size
                    h = scale / ratio / config.max_size
                else:
                    w = scale * ratio / conv_w
                    h = scale / ratio / conv_h
                sizes.append((w, w if config.use_square_anchors else h))
        num_anchors = len(sizes)
        level = np.empty((conv_h * conv_w, num_anchors, 4), dtype=np.float64)
        level[:, :, 0] = centers_x
        level[:, :, 1] = centers_y
        level[:, :, 2:] = np.asarray(sizes, dtype=np.float64)[None]
        rows.append(level.reshape(-1, 4))
    return np.concatenate(rows).astype(np.float32)
