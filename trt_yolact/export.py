"""Export YOLACT to ONNX (FP32, optionally FP16 and with the post-processing in the graph).

    python -m trt_yolact.export --weights CKPT [--config NAME_OR_FILE] [--out export/] [--fp16]
                                [--postprocess none|graph] [--batch N] [--opset 17] [--no-simplify]

The graph has one input ``images [B,3,S,S]`` (float32, normalised as the model expects, see
:mod:`trt_yolact.preprocess`) and the raw outputs ``loc, conf, coeffs, proto, priors`` (``priors`` is a
constant), or with ``--postprocess graph`` the fixed-size detections of
:mod:`trt_yolact.onnx_postprocess`. Everything a consumer needs to prepare inputs and read outputs is
stored in the model's ``metadata_props`` (:func:`read_onnx_metadata`).

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. For this static CNN it gives a
clean graph (batch norm folded into the convolutions, priors as one constant, dynamic batch through
``dynamic_axes``) and needs no onnxscript; onnxsim then folds the shape arithmetic of the FPN resizes.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import first_line as _first_line
from .config import YolactConfig
from .files import atomic_write_bytes, sha256_file
from .onnx_postprocess import GRAPH_OUTPUT_NAMES, YolactWithPostprocess
from .postprocess import PostprocessConfig
from .structures import OUTPUT_NAMES

INPUT_NAME = "images"
RAW_OUTPUT_NAMES: tuple[str, ...] = tuple(OUTPUT_NAMES)
MIN_OPSET = 17
# The highest IR version written (unless the opset needs more): what ONNX Runtime >= 1.20 reads, and
# the onnx release TensorRT 10's parser is built with; opsets 17..21 need IR 8..10.
MAX_IR_VERSION = 10
EXPORTER = "torch.onnx.export (TorchScript-based, dynamo=False)"
POSTPROCESS_MODES = ("none", "graph")
# Op types kept in FP32 by convert_fp16, besides onnxconverter-common's own block list (Resize, TopK,
# Range, Max/Min, CumSum, ...): softmax/exp/sigmoid lose their tails in FP16 (class scores near the 0.05
# candidate threshold, box sizes from exp(loc), mask probabilities), reductions can overflow.
DEFAULT_KEEP_FP32_OPS: tuple[str, ...] = ("Softmax", "Exp", "Sigmoid", "Resize", "ReduceMax", "ReduceSum", "TopK")
# Exported node names start with this scope inside the network (the wrappers call it ``model``). Every
# other node (graph post-processing: box decoding, IoU, sorting, mask crop; the priors constant) stays
# FP32: it is cheap, and thresholds and coordinates must not move.
NETWORK_SCOPE = "/model/"


class _RawExport(nn.Module):
    """The model with its raw outputs. ``priors`` is cloned inside the trace: the model caches its priors
    after the first call, and the tracer rejects a cached tensor returned untouched as an output (one
    computed inside the trace, e.g. by the clone, becomes a constant of the graph)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw = self.model(images)
        return (*raw[:-1], raw[-1].clone())


class ExportError(RuntimeError):
    """The model cannot be exported or converted (one line saying why)."""


@dataclass(frozen=True)
class ExportResult:
    """One written ONNX artifact."""

    path: Path
    precision: str  # "fp32" or "fp16"
    postprocess: str  # "none" or "graph"
    opset: int
    ir_version: int
    input_shape: tuple[int | str, ...]  # ("batch", 3, S, S) with a dynamic batch
    output_names: tuple[str, ...]
    simplified: bool
    simplify_error: str | None  # why onnxsim was skipped or failed (the unsimplified model was kept)
    size_bytes: int
    sha256: str
    metadata: dict[str, str] = field(default_factory=dict)
    exporter: str = EXPORTER
    seconds: float = 0.0

    @property
    def batch_dynamic(self) -> bool:
        return isinstance(self.input_shape[0], str)


# --------------------------------------------------------------------------------------------- metadata
def build_metadata(
    config: YolactConfig,
    *,
    precision: str,
    postprocess: PostprocessConfig | None,
    source_sha256: str | None,
) -> dict[str, str]:
    """The ``metadata_props`` of an export: all values are strings, structured ones JSON."""
    meta = {
        "config": json.dumps(config.to_dict()),
        "input_size": str(config.max_size),
        "mean": json.dumps(list(config.mean)),
        "std": json.dumps(list(config.std)),
        "normalization": config.normalization,
        "class_names": json.dumps(list(config.class_names)),
        "category_ids": json.dumps(list(config.category_ids)),
        "trt_yolact_version": __version__,
        "postprocess": "graph" if postprocess is not None else "none",
        "precision": precision,
        "exporter": EXPORTER,
    }
    if postprocess is not None:
        meta["postprocess_config"] = json.dumps(asdict(postprocess))
    if source_sha256:
        meta["source_sha256"] = source_sha256
    return meta


def parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """Typed values of export metadata (as read by ONNX or by ONNX Runtime's ``custom_metadata_map``):
    ``config`` -> :class:`YolactConfig`, ``postprocess_config`` -> :class:`PostprocessConfig`,
    ``input_size`` -> int, lists -> tuples; unknown keys stay strings."""
    out: dict[str, Any] = dict(props)
    try:
        if "config" in props:
            out["config"] = YolactConfig.from_dict(json.loads(props["config"]))
        if "postprocess_config" in props:
            out["postprocess_config"] = PostprocessConfig(**json.loads(props["postprocess_config"]))
        if "input_size" in props:
            out["input_size"] = int(props["input_size"])
        for key, cast in (("mean", float), ("std", float), ("class_names", str), ("category_ids", int)):
            if key in props:
                out[key] = tuple(cast(v) for v in json.loads(props[key]))
    except (ValueError, TypeError) as exc:  # ConfigError and JSONDecodeError are ValueErrors
        raise ExportError(f"malformed trt_yolact metadata in the ONNX model: {exc}") from None
    return out


def _load_onnx(path: str | os.PathLike):
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure is one message
        raise ExportError(f"{path} is not a readable ONNX model: {_first_line(exc)}") from None


def read_onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The export metadata of an ONNX file, typed (see :func:`parse_metadata`)."""
    model = _load_onnx(path)
    return parse_metadata({p.key: p.value for p in model.metadata_props})


# ----------------------------------------------------------------------------------------- graph fixes
def _max_ir_version(model) -> int:
    import onnx.helper

    # Never below what the opset needs (opset 17 needs IR 8), never above what runtimes here read.
    needed = onnx.helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)
    return max(needed, min(model.ir_version, MAX_IR_VERSION))


def _set_output_shapes(model, shapes: Mapping[str, Sequence[int | str]]) -> None:
    """Write the known output shapes: the exporter leaves symbolic names for the prior count because
    ``reshape(batch, -1, ...)`` cannot be inferred with a symbolic batch; consumers want numbers."""
    for output in model.graph.output:
        if output.name not in shapes:
            continue
        dims = output.type.tensor_type.shape.dim
        del dims[:]
        for value in shapes[output.name]:
            dim = dims.add()
            if isinstance(value, str):
                dim.dim_param = value
            else:
                dim.dim_value = int(value)


def _simplify(model) -> tuple[Any, str | None]:
    """onnxsim, or the model unchanged with the reason when it fails or breaks the interface."""
    try:
        import onnxsim
    except ImportError:
        return model, "onnxsim is not installed"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            simplified, ok = onnxsim.simplify(model, certify=False)
    except Exception as exc:  # noqa: BLE001 - a failed simplification keeps the exported model
        return model, f"onnxsim failed: {_first_line(exc)}"
    if not ok:
        return model, "onnxsim could not validate the simplified model"

    def interface(m):
        return [(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim][:1])
                for v in [*m.graph.input, *m.graph.output]]  # fmt: skip

    if interface(simplified) != interface(model):
        return model, "onnxsim changed the model's inputs/outputs (e.g. the dynamic batch)"
    return simplified, None


def _finalize(model, metadata: Mapping[str, str]) -> None:
    import onnx

    model.ir_version = _max_ir_version(model)
    del model.metadata_props[:]  # onnxsim leaves its own bookkeeping here
    onnx.helper.set_model_props(model, dict(metadata))
    model.producer_name, model.producer_version = "trt_yolact", __version__
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"the exported model does not pass onnx.checker: {_first_line(exc)}") from None


# ---------------------------------------------------------------------------------------------- export
def export_onnx(
    model: nn.Module,
    out_path: str | os.PathLike,
    batch_dynamic: bool = True,
    opset: int = 17,
    simplify: bool = True,
    source_checkpoint: str | os.PathLike | None = None,
    *,
    batch_size: int = 1,
    postprocess: PostprocessConfig | None = None,
) -> ExportResult:
    """Export a :class:`~trt_yolact.model.Yolact` to ``out_path`` (FP32), written atomically.

    ``batch_dynamic=False`` fixes the batch at ``batch_size``. ``postprocess``: None exports the raw
    outputs; a :class:`PostprocessConfig` exports the graph post-processing
    (:class:`~trt_yolact.onnx_postprocess.YolactWithPostprocess`) instead. ``source_checkpoint``: the
    checkpoint file the weights came from; its sha256 goes into the metadata.
    """
    import onnx

    config = getattr(model, "config", None)
    if not isinstance(config, YolactConfig) or not isinstance(model, nn.Module):
        raise ExportError(f"expected a Yolact model with a .config, got {type(model).__name__}")
    max_opset = onnx.defs.onnx_opset_version()
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= max_opset:
        raise ExportError(f"opset must be an integer from {MIN_OPSET} to {max_opset}, got {opset!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch_size must be a positive integer, got {batch_size!r}")
    source_sha = None
    if source_checkpoint is not None:
        if not Path(source_checkpoint).is_file():
            raise ExportError(f"source checkpoint not found: {source_checkpoint}")
        source_sha = sha256_file(source_checkpoint)

    start = time.perf_counter()
    wrapped = _RawExport(model) if postprocess is None else YolactWithPostprocess(model, postprocess)
    output_names = RAW_OUTPUT_NAMES if postprocess is None else GRAPH_OUTPUT_NAMES
    device = next(model.parameters()).device
    size = config.max_size
    example = torch.zeros((batch_size, 3, size, size), dtype=torch.float32, device=device)
    batch_dim: int | str = "batch" if batch_dynamic else batch_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            reference = wrapped(example)
            batch_outputs = [n for n, t in zip(output_names, reference) if n != "priors"]
            shapes = {
                n: ([batch_dim, *t.shape[1:]] if n in batch_outputs else list(t.shape))
                for n, t in zip(output_names, reference)
            }
            buffer = io.BytesIO()
            with warnings.catch_warnings():
                # Expected tracer notes: static feature sizes become constants, priors come from numpy.
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapped,
                    (example,),
                    buffer,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=list(output_names),
                    dynamic_axes={n: {0: "batch"} for n in (INPUT_NAME, *batch_outputs)} if batch_dynamic else None,
                    do_constant_folding=True,
                )
    except Exception as exc:  # noqa: BLE001 - tracing/exporter failures become one message
        raise ExportError(f"torch.onnx.export failed: {_first_line(exc)}") from None
    finally:
        model.train(was_training)

    onnx_model = onnx.load_from_string(buffer.getvalue())
    simplify_error: str | None = None
    if simplify:
        onnx_model, simplify_error = _simplify(onnx_model)
    _set_output_shapes(onnx_model, shapes)
    metadata = build_metadata(config, precision="fp32", postprocess=postprocess, source_sha256=source_sha)
    _finalize(onnx_model, metadata)
    data = onnx_model.SerializeToString()
    path = atomic_write_bytes(out_path, data)
    return ExportResult(
        path=path,
        precision="fp32",
        postprocess=metadata["postprocess"],
        opset=opset,
        ir_version=int(onnx_model.ir_version),
        input_shape=(batch_dim, 3, size, size),
        output_names=tuple(output_names),
        simplified=simplify and simplify_error is None,
        simplify_error=simplify_error,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        metadata=metadata,
        seconds=time.perf_counter() - start,
    )


# ------------------------------------------------------------------------------------------------ FP16
def _verify_in_onnxruntime(data: bytes, what: str) -> None:
    """Load and run the model once on zeros in ONNX Runtime (CPU): a converted model must be usable."""
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError:
        return  # nothing to verify with; the checker already passed
    try:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        (image_input,) = session.get_inputs()
        shape = [d if isinstance(d, int) else 1 for d in image_input.shape]
        dtype = np.float16 if image_input.type == "tensor(float16)" else np.float32
        outputs = session.run(None, {image_input.name: np.zeros(shape, dtype)})
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"{what} does not run in ONNX Runtime: {_first_line(exc)}") from None
    for meta, value in zip(session.get_outputs(), outputs):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            raise ExportError(f"{what} produces non-finite values in output {meta.name!r}")


def _remove_cast_round_trips(model) -> None:
    """Bypass FP32 -> FP16 -> FP32 cast pairs. onnxconverter-common wraps each blocked node in casts on
    its own, so a chain of FP32 nodes gets a pointless FP16 rounding between every two of them."""
    import onnx

    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16

    def cast_to(node) -> int | None:
        if node.op_type != "Cast":
            return None
        return next((a.i for a in node.attribute if a.name == "to"), None)

    graph_outputs = {o.name for o in model.graph.output}
    producers = {out: node for node in model.graph.node for out in node.output}
    rename: dict[str, str] = {}
    for node in model.graph.node:
        first = producers.get(node.input[0]) if node.input else None
        if cast_to(node) == float32 and first is not None and cast_to(first) == float16:
            if node.output[0] not in graph_outputs:
                # The converter only casts FP32 tensors to FP16, so the pair's input is FP32 already.
                rename[node.output[0]] = first.input[0]
    if not rename:
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    # Drop the casts that nothing reads any more (the FP16 casts may still feed FP16 nodes).
    while True:
        used = {name for node in model.graph.node for name in node.input} | graph_outputs
        dead = [n for n in model.graph.node if n.op_type == "Cast" and n.output[0] not in used]
        if not dead:
            break
        for node in dead:
            model.graph.node.remove(node)
    kept = {out for node in model.graph.node for out in node.output}
    stale = [v for v in model.graph.value_info if v.name not in kept]
    for info in stale:
        model.graph.value_info.remove(info)


def _restore_float_outputs(model, float_outputs: set[str]) -> None:
    """Make the outputs that were float32 float32 again. With ``keep_io_types`` onnxconverter-common
    still ends an output produced by a blocked (FP32) node with a cast to FP16; that cast, or a new one,
    now casts to FP32 (a cast FP32 -> FP32 is a no-op that ONNX Runtime and TensorRT remove)."""
    import onnx

    float32, float16 = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16
    producers = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        if output.name not in float_outputs or output.type.tensor_type.elem_type != float16:
            continue
        node = producers.get(output.name)
        if node is not None and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = float32
        else:
            inner = f"{output.name}_fp16"
            if node is not None:
                node.output[list(node.output).index(output.name)] = inner
            model.graph.node.append(onnx.helper.make_node("Cast", [inner], [output.name], to=float32, name=f"{output.name}_to_fp32"))
        output.type.tensor_type.elem_type = float32
        for info in model.graph.value_info:
            if info.name == output.name:
                info.type.tensor_type.elem_type = float32


def convert_fp16(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    keep_fp32_ops: Sequence[str] = DEFAULT_KEEP_FP32_OPS,
) -> Path:
    """FP32 export -> FP16 ONNX (float32 inputs and outputs, weights and most ops in FP16).

    Kept in FP32: the op types ``keep_fp32_ops`` plus onnxconverter-common's default block list, every
    node of the graph post-processing, and the ``priors`` constant (exact prior boxes). The result is
    checked with onnx.checker and run once in ONNX Runtime (CPU) before it is written atomically.
    """
    import onnx
    from onnxconverter_common import float16

    model = _load_onnx(fp32_path)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("precision", "fp32") != "fp32":
        raise ExportError(f"{fp32_path} is already {props['precision']}: convert the FP32 export")
    if any(i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 for i in model.graph.input):
        raise ExportError(f"{fp32_path} already has an FP16 input: convert the FP32 export")
    nodes = list(model.graph.node)
    if any(n.name.startswith(NETWORK_SCOPE) for n in nodes):
        keep_nodes = [n.name for n in nodes if not n.name.startswith(NETWORK_SCOPE)]
    else:  # not our export's naming: keep at least the priors constant exact
        keep_nodes = [n.name for n in nodes if "priors" in n.output]
    block_ops = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_fp32_ops))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "values truncated to the FP16 range" notes, expected
            half = float16.convert_float_to_float16(
                model, keep_io_types=True, op_block_list=block_ops, node_block_list=keep_nodes
            )
    except Exception as exc:  # noqa: BLE001
        raise ExportError(f"FP16 conversion of {fp32_path} failed: {_first_line(exc)}") from None
    _remove_cast_round_trips(half)
    _restore_float_outputs(half, {o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT})
    props["precision"] = "fp16"
    props["fp32_ops"] = json.dumps([op for op in keep_fp32_ops])
    _finalize(half, props)
    data = half.SerializeToString()
    _verify_in_onnxruntime(data, f"the FP16 model converted from {Path(fp32_path).name}")
    return atomic_write_bytes(out_path, data)


# ------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trt_yolact.export", description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None, help="checkpoint file or embedded model name (default: yolact_shapes)")
    parser.add_argument("--config", default=None, help="official config name or .yaml/.json file (default: from the checkpoint)")
    parser.add_argument("--out", default="export", help="output folder (default: export/)")
    parser.add_argument("--name", default="model", help="file name stem: NAME.onnx, NAME.fp16.onnx, ... (default: model)")
    parser.add_argument("--batch", type=int, default=None, metavar="N", help="fixed batch size N (default: dynamic batch)")
    parser.add_argument("--opset", type=int, default=17, help=f"ONNX opset, at least {MIN_OPSET} (default: 17)")
    parser.add_argument("--fp16", action="store_true", help="also write FP16 versions (NAME.fp16.onnx)")
    parser.add_argument("--postprocess", choices=POSTPROCESS_MODES, default="none",
                        help="graph: also write NAME.postprocess.onnx with decode, Fast NMS and masks in the graph")  # fmt: skip
    parser.add_argument("--max-detections", type=int, default=100, help="detection slots per image with --postprocess graph")
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    return parser


def _human_size(size: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _writable_staging_dir(out_dir: Path) -> Path:
    """A private folder inside ``out_dir`` (created if needed) for the artifacts until they are complete."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as exc:
        raise ExportError(f"cannot write to output folder {out_dir}: {exc.strerror or exc}") from None


@dataclass(frozen=True)
class WrittenFile:
    """One file written by the CLI."""

    path: Path
    precision: str
    postprocess: str
    size_bytes: int
    note: str | None = None  # e.g. why it is not simplified


def run_export(args: argparse.Namespace) -> list[WrittenFile]:
    """Export what ``args`` asks for into ``args.out``. The files are made in a private staging folder and
    moved into place only once all of them are complete; on failure nothing new is left behind."""
    from .checkpoint import build_model, choose_config, read_checkpoint

    if args.batch is not None and args.batch < 1:
        raise ExportError(f"--batch must be at least 1, got {args.batch}")
    if args.max_detections < 1:
        raise ExportError(f"--max-detections must be at least 1, got {args.max_detections}")
    if not args.name or any(sep in args.name for sep in ("/", "\\")) or args.name.startswith("."):
        raise ExportError(f"--name must be a plain file name stem, got {args.name!r}")
    # Input problems first, so that a bad checkpoint or config creates no output folder at all.
    checkpoint = read_checkpoint(args.weights)
    model = build_model(checkpoint.state_dict, choose_config(checkpoint, args.config), source=str(checkpoint.path))

    out_dir = Path(args.out)
    existed = out_dir.is_dir()
    staging = _writable_staging_dir(out_dir)
    try:
        options: dict[str, Any] = dict(
            batch_dynamic=args.batch is None,
            opset=args.opset,
            simplify=not args.no_simplify,
            source_checkpoint=checkpoint.path,
            batch_size=args.batch or 1,
        )
        plan: list[tuple[str, PostprocessConfig | None]] = [("", None)]
        if args.postprocess == "graph":
            plan.append((".postprocess", PostprocessConfig(max_detections=args.max_detections)))
        staged: list[WrittenFile] = []
        for suffix, post in plan:
            result = export_onnx(model, staging / f"{args.name}{suffix}.onnx", postprocess=post, **options)
            note = f"not simplified: {result.simplify_error}" if result.simplify_error and not args.no_simplify else None
            staged.append(WrittenFile(result.path, "fp32", result.postprocess, result.size_bytes, note))
            if args.fp16:
                half = convert_fp16(result.path, staging / f"{args.name}{suffix}.fp16.onnx")
                staged.append(WrittenFile(half, "fp16", result.postprocess, half.stat().st_size))
        written = []
        for item in staged:  # every artifact is complete: move them into place
            target = out_dir / item.path.name
            os.replace(item.path, target)
            written.append(replace(item, path=target))
        return written
    except BaseException:
        if not existed:
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@torch.no_grad()
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        written = run_export(args)
    except (ExportError, ValueError, OSError) as exc:  # CheckpointError and ConfigError are ValueErrors
        print(f"error: {exc}", file=sys.stderr)
        return 2
    header = ("file", "size", "precision", "postprocess")
    rows = [(str(f.path), _human_size(f.size_bytes), f.precision, f.postprocess) for f in written]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    for item in written:
        if item.note:
            print(f"note: {item.path.name} {item.note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
