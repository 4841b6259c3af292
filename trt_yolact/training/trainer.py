"""Train YOLACT on a COCO-format dataset (also the fine-tuning step after pruning).

Runs unchanged under ``torchrun`` (DistributedDataParallel; gloo on CPU, NCCL on GPUs). Every random choice
(shuffling, augmentation, mask subsampling) derives from ``--seed`` and the iteration, so ``--resume``
continues exactly where the last checkpoint left off.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from ..config import YolactConfig, get_config
from ..data.augment import TrainTransform, ValTransform
from ..data.coco import CocoDetection, collate_samples
from ..errors import CheckpointError, ConfigError, TrainingError, first_line
from ..files import atomic_write_bytes, check_writable
from ..inference.predictor import Predictor
from ..metrics.coco_eval import evaluate
from ..model.checkpoint import checkpoint_payload, clean_state_dict, read_checkpoint, save_checkpoint, serialize
from ..model.safe_load import load_tensors
from ..model.yolact import Yolact
from ..runtime.base import resolve_device
from ..runtime.torch_runner import TorchRunner
from .logs import LOSS_TERMS, RUN_FILES, TrainingLog
from .loss import LossConfig, YolactLoss
from .sparsity import apply_sparsity_penalty

TRAIN_STATE = "last.pth"
FINAL_MODEL = "model_final.pth"


@dataclass
class TrainConfig:
    iters: int = 8000
    batch_size: int = 8
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_iters: int = 500
    warmup_init: float = 1e-4  # lr at iteration 0, raised linearly to ``lr`` over the warm-up
    lr_steps: tuple[float, ...] = (0.7, 0.9)  # fractions of ``iters`` where the lr is multiplied by gamma
    gamma: float = 0.1
    seed: int = 0
    workers: int = 2
    val_every: int = 1000
    val_images: int = 200
    checkpoint_every: int = 200
    log_every: int = 10
    sparsity: float = 0.0  # L1 penalty on prunable BN scales (network slimming)
    sparsity_scope: str = "internal"  # "all": also group lasso on the BN-free groups (FPN, protonet, head)
    sparsity_neck: float | None = None  # the group-lasso strength with scope "all" (None: ``sparsity``)
    clip_grad: float = 0.0  # max gradient norm; 0 = off (the original does not clip; from scratch helps)
    expand_max_ratio: float = 4.0  # augmentation zoom-out limit (the original's 4 suits COCO at 550 px)
    min_box_size: float = 4.0  # objects smaller than this many pixels after augmentation are dropped
    amp: bool = True  # mixed precision on CUDA only

    def lr_at(self, iteration: int) -> float:
        if iteration < self.warmup_iters:
            return self.warmup_init + (self.lr - self.warmup_init) * iteration / self.warmup_iters
        passed = sum(iteration >= int(step * self.iters) for step in self.lr_steps)
        return self.lr * self.gamma**passed


# ------------------------------------------------------------------------------------------------ data
def parse_data_argument(value: str) -> tuple[Path, Path]:
    """``ANN.json:IMAGES_DIR`` -> paths (the last ``:`` splits, so Windows-style drive letters survive)."""
    if ":" not in value:
        raise TrainingError(f"--data-* expects ANNOTATIONS.json:IMAGE_DIR, got {value!r}")
    ann, images = value.rsplit(":", 1)
    return Path(ann), Path(images)


class IterationSampler(Sampler[int]):
    """An endless stream of sample positions for one rank, starting at ``start`` (for resuming).

    Position ``p`` is the ``p``-th sample drawn overall; ranks interleave positions so that together they
    see exactly what one process would."""

    def __init__(self, start: int, rank: int = 0, world: int = 1):
        self.start, self.rank, self.world = start, rank, world

    def __iter__(self) -> Iterator[int]:
        position = self.start + self.rank
        while True:
            yield position
            position += self.world

    def __len__(self) -> int:  # pragma: no cover - endless
        return sys.maxsize


class PositionDataset(Dataset):
    """Maps a stream position to (epoch permutation, sample) and seeds the augmentation from the position,
    so a sample's augmentation does not depend on workers, ranks or interruptions."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed
        self._epoch = -1
        self._order: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, position: int):
        size = len(self.dataset)
        epoch, offset = divmod(position, size)
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._order = torch.randperm(size, generator=generator)
            self._epoch = epoch
        transform = getattr(self.dataset, "transform", None)
        if transform is not None and hasattr(transform, "reseed"):
            transform.reseed((self.seed << 32) + position)
        return self.dataset[int(self._order[offset])]


def build_datasets(
    train_arg: str, val_arg: str | None, config: YolactConfig, train_config: TrainConfig = TrainConfig()
):
    train_ann, train_images = parse_data_argument(train_arg)
    augment = TrainTransform(
        config.max_size,
        normalize=config.normalization,
        min_box_size=train_config.min_box_size,
        expand_max_ratio=train_config.expand_max_ratio,
    )
    train = CocoDetection(train_ann, train_images, augment)
    val = None
    if val_arg:
        val_ann, val_images = parse_data_argument(val_arg)
        val = CocoDetection(val_ann, val_images, ValTransform(config.max_size, config.normalization), keep_empty=True)
    return train, val


# ----------------------------------------------------------------------------------------------- model
def init_head_weights(model: Yolact, background_prior: float = 0.99) -> None:
    """Xavier-uniform weights and zero biases for every conv outside the backbone, as the original, plus a
    background prior on the class biases: every prior starts out confidently background, so the flood of
    easy negatives does not produce the huge first-step gradients that, from scratch, drive the shared
    head's ReLUs dead (the focal-loss paper's prior initialisation, applied to the softmax)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d) and not name.startswith("backbone."):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    if background_prior > 0:
        num_classes = model.config.num_classes
        conf = model.prediction_layers[0].conf_layer
        with torch.no_grad():
            bias = conf.bias.view(-1, num_classes)
            bias[:, 0] = math.log(background_prior * (num_classes - 1) / (1 - background_prior))


CLASS_DEPENDENT_PREFIXES = ("prediction_layers.0.conf_layer.", "semantic_seg_conv.")


def initial_model(config: YolactConfig, weights: str | None) -> tuple[Yolact, list[str]]:
    """A fresh model, or one started from ``weights`` (internal widths follow the checkpoint, e.g. after
    pruning). Class-dependent layers are re-initialised when the number of classes differs."""
    if weights is None:
        model = Yolact(config)
        init_head_weights(model)
        return model, []
    state = clean_state_dict(read_checkpoint(weights).state_dict, config)
    model = Yolact(config, state)
    init_head_weights(model)
    expected = model.state_dict()
    mismatched = [
        k
        for k in state
        if k.startswith(CLASS_DEPENDENT_PREFIXES) and k in expected and state[k].shape != expected[k].shape
    ]
    missing, unexpected = model.load_state_dict({k: v for k, v in state.items() if k not in mismatched}, strict=False)
    problems = [k for k in missing if k not in mismatched]
    if problems or unexpected:
        raise CheckpointError(
            f"{weights} does not fit config {config.name!r}: missing {problems[:8]}, unexpected {unexpected[:8]}"
        )
    return model, sorted({k.rsplit(".", 1)[0] for k in mismatched})


class TrainForward(nn.Module):
    """Makes ``forward_train`` the module's forward, so that DistributedDataParallel hooks it."""

    def __init__(self, model: Yolact):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor):
        return self.model.forward_train(images)


# ------------------------------------------------------------------------------------------- trainer
@dataclass
class TrainState:
    iteration: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # validation rows


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state()}


def distributed_context(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); initialises the process group when launched by torchrun.

    Under torchrun each process takes the GPU of its local rank. The backend follows the training device,
    not the machine: NCCL carries CUDA tensors only, so CPU training on a GPU machine needs gloo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


STATE_KEYS = ("model", "config", "optimizer", "scaler", "iteration", "rng")
MAX_NONFINITE_STEPS = 3  # non-finite batches in a row (with finite weights) that count as divergence


def check_state_file(path: Path) -> None:
    if path.exists() and not path.is_file():
        raise TrainingError(f"--resume: {path} is a folder, not a checkpoint file")
    if not path.is_file():
        raise TrainingError(f"--resume: no checkpoint {path}; train without --resume first")


def read_train_state(path: Path, config: YolactConfig) -> dict[str, Any]:
    """The training state in ``path``, checked field by field (a damaged or edited file is one clear line)."""
    check_state_file(path)
    data = load_tensors(path)
    lacking = [k for k in STATE_KEYS if k not in data] if isinstance(data, dict) else list(STATE_KEYS)
    if lacking:
        raise TrainingError(f"--resume: {path} is not a training state of this trainer (lacks {lacking})")
    problem = _state_problem(data)
    if problem:
        raise TrainingError(f"--resume: {path} is damaged or was edited: {problem}")
    if data["config"] != config.to_dict():
        try:
            stored = repr(YolactConfig.from_dict(data["config"]).name)
        except (ConfigError, TypeError):
            stored = "that cannot be read"
        raise TrainingError(
            f"--resume: {path} was trained with config {stored} (and its dataset's classes), which differ from "
            f"this run's {config.name!r}: resume with the same --config and data, or train into another --out"
        )
    return data


def _keys_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """The keys missing from ``given``, unexpected in it, or of another shape ("" when it fits)."""
    kinds = {
        "missing": sorted(set(expected) - set(given)),
        "unexpected": sorted(set(given) - set(expected)),
        "misshaped": sorted(k for k in set(expected) & set(given) if expected[k].shape != given[k].shape),
    }
    return "; ".join(f"{len(keys)} {kind}: {', '.join(keys[:3])}" for kind, keys in kinds.items() if keys)


def _state_problem(data: dict[str, Any]) -> str | None:
    """What is wrong with the fields of a training state, or None."""
    iteration, rng, model = data["iteration"], data["rng"], data["model"]
    if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
        return f"its iteration is {iteration!r}, not a count of iterations"
    if not isinstance(rng, dict) or not isinstance(rng.get("torch"), torch.Tensor):
        return "its random state ('rng') is not the one this trainer saves"
    if not isinstance(model, dict) or not all(isinstance(v, torch.Tensor) for v in model.values()):
        return "its 'model' is not a state dict (a mapping of names to tensors)"
    if not all(bool(torch.isfinite(v).all()) for v in model.values() if v.is_floating_point()):
        return "its weights hold NaN or inf values"
    for key in ("config", "optimizer", "scaler"):
        if not isinstance(data[key], dict):
            return f"its {key!r} is a {type(data[key]).__name__}, not a mapping"
    if not isinstance(data["optimizer"].get("param_groups"), list) or "state" not in data["optimizer"]:
        return "its optimizer state lacks 'param_groups' or 'state'"
    history = data.get("history", [])
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        return "its validation history is not a list of rows"
    return None


class Trainer:
    def __init__(
        self,
        config: YolactConfig,
        train_set: Dataset,
        val_set: Dataset | None,
        out_dir: Path,
        train_config: TrainConfig,
        model: Yolact,
        device: torch.device,
        loss_config: LossConfig = LossConfig(),
    ):
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self.out_dir, self.tc = out_dir, train_config
        self.rank, self.world, device = distributed_context(device)
        self.device = device
        self.model = model.to(device)
        self.forward = TrainForward(self.model)
        if self.world > 1:
            self.forward = nn.parallel.DistributedDataParallel(
                self.forward, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.loss = YolactLoss(loss_config)
        self.optimizer = torch.optim.SGD(
            self.model.parameters(),
            lr=train_config.lr,
            momentum=train_config.momentum,
            weight_decay=train_config.weight_decay,
        )
        self.use_amp = train_config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.state = TrainState()
        self.saved_iteration: int | None = None  # of the last checkpoint this run wrote or resumed from
        self.nonfinite_steps = 0  # skipped in a row

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- checkpoints ---------------------------------------------------------------------------------
    def save(self) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise self._diverged("the weights became non-finite (NaN or inf)")  # never checkpointed
        if not self.is_main:
            return
        payload = checkpoint_payload(
            self.model,
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict(),
            iteration=self.state.iteration,
            history=self.state.history,
            train_config={k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self.tc).items()},
            rng=rng_state(),
        )
        atomic_write_bytes(self.out_dir / TRAIN_STATE, serialize(payload))
        self.saved_iteration = self.state.iteration

    def resume(self) -> None:
        path = self.out_dir / TRAIN_STATE
        data = read_train_state(path, self.config)
        if data["iteration"] > self.tc.iters:
            raise TrainingError(
                f"--resume: {path} is at iteration {data['iteration']}, beyond --iters {self.tc.iters}: "
                f"pass --iters {data['iteration']} or more"
            )
        mismatch = _keys_mismatch(self.model.state_dict(), data["model"])
        if mismatch:
            raise TrainingError(f"--resume: {path} holds another model than this run's ({mismatch})")
        try:
            self.model.load_state_dict(data["model"])
            self.optimizer.load_state_dict(data["optimizer"])
            self.scaler.load_state_dict(data["scaler"])
            torch.set_rng_state(data["rng"]["torch"])
        except Exception as exc:  # noqa: BLE001 - torch's loaders raise several kinds; each is one line here
            raise TrainingError(
                f"--resume: {path} does not fit this run ({first_line(exc, 200)}): resume with the same --config, "
                "data and --weights, or train into another --out"
            ) from None
        self.state = TrainState(data["iteration"], list(data.get("history", [])))
        self.saved_iteration = self.state.iteration

    def resume_hint(self) -> str:
        """What an ended run leaves to continue from: a checkpoint of this run, or nothing."""
        if self.saved_iteration is None:
            every = self.tc.checkpoint_every
            return f"no checkpoint was written yet (one every {every} iterations): nothing of this run was kept"
        path = self.out_dir / TRAIN_STATE
        return f"the last complete checkpoint is {path} (iteration {self.saved_iteration}; continue with --resume)"

    def _diverged(self, what: str) -> TrainingError:
        return TrainingError(
            f"training diverged at iteration {self.state.iteration + 1}: {what}; lower --lr, raise --warmup-iters "
            f"or set --clip-grad; {self.resume_hint()}"
        )

    # -- loop ----------------------------------------------------------------------------------------
    def _loader(self):
        sampler = IterationSampler(self.state.iteration * self.tc.batch_size * self.world, self.rank, self.world)
        return torch.utils.data.DataLoader(
            PositionDataset(self.train_set, self.tc.seed),
            batch_size=self.tc.batch_size,
            sampler=sampler,
            num_workers=self.tc.workers,
            collate_fn=collate_samples,
            persistent_workers=self.tc.workers > 0,
            pin_memory=self.device.type == "cuda",
        )

    def step(self, batch) -> dict[str, float]:
        """One optimisation step on one batch; returns the loss terms."""
        tc = self.tc
        for group in self.optimizer.param_groups:
            group["lr"] = tc.lr_at(self.state.iteration)
        self.model.train()
        images = batch.images.to(self.device, non_blocking=True)
        targets = {
            "boxes": [b.to(self.device) for b in batch.boxes],
            "labels": [labels.to(self.device) for labels in batch.labels],
            "masks": [m.to(self.device) for m in batch.masks],
            "num_crowds": batch.num_crowds,
        }
        # Mask subsampling draws from a generator tied to the iteration: exact on resume.
        generator = torch.Generator(device="cpu").manual_seed(tc.seed * 7919 + self.state.iteration * 31 + self.rank)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            outputs = self.forward(images)
        outputs = type(outputs)(*(t.float() for t in outputs))
        if not all(bool(torch.isfinite(t).all()) for t in outputs):
            return self._skip_step("the model's outputs", dict.fromkeys(LOSS_TERMS, math.nan))
        losses = self.loss(outputs, targets, generator=generator)
        if not torch.isfinite(losses["total"]):
            return self._skip_step("the loss", {k: float(v.detach()) for k, v in losses.items()})
        self.nonfinite_steps = 0
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(losses["total"]).backward()
        self.scaler.unscale_(self.optimizer)
        apply_sparsity_penalty(self.model, tc.sparsity, tc.sparsity_scope, tc.sparsity_neck)
        if tc.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.state.iteration += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def _skip_step(self, what: str, losses: dict[str, float]) -> dict[str, float]:
        """A batch whose outputs or loss are not finite (an AMP overflow, an odd batch) is skipped, as the
        original does; training has diverged when the weights themselves are no longer finite or when it
        happens ``MAX_NONFINITE_STEPS`` times in a row."""
        self.nonfinite_steps += 1
        weights_finite = all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if not weights_finite or self.nonfinite_steps >= MAX_NONFINITE_STEPS:
            also = "" if weights_finite else ", and so did the weights"
            raise self._diverged(f"{what} became non-finite (NaN or inf){also}")
        self.state.iteration += 1
        return losses

    def validate(self) -> dict[str, float]:
        self.model.eval()
        # NCHW: the runner's in-place NHWC conversion would change the layout the model trains in.
        with torch.no_grad(), TorchRunner(self.model, self.device, channels_last=False) as runner:
            predictor = Predictor(runner, self.config)
            result, _ = evaluate(
                predictor,
                self.val_set.ann_file,
                self.val_set.image_dir,
                batch_size=8,
                max_images=self.tc.val_images,
                progress=False,
            )
        self.model.train()
        return {"iteration": self.state.iteration, "box_ap": result.bbox["AP"], "mask_ap": result.segm["AP"]}

    def run(self, stop_at: int | None = None) -> TrainState:
        """Train to ``tc.iters``; with ``stop_at``, end after that iteration with a checkpoint (a long schedule
        split into periods of work, continued with --resume) and no final model. A run that ends by an error
        or Ctrl-C before its first checkpoint leaves nothing (its logs are removed)."""
        tc = self.tc
        end = tc.iters if stop_at is None else min(stop_at, tc.iters)
        created = not self.out_dir.is_dir()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        log = None
        try:
            if self.is_main:
                scope = tc.sparsity_scope if tc.sparsity > 0 or tc.sparsity_neck else None
                log = TrainingLog(self.out_dir, self.state.iteration, self.model, scope)
            self._loop(log, end)
            if log is not None and self.state.iteration == tc.iters:
                save_checkpoint(self.out_dir / FINAL_MODEL, self.model, iteration=self.state.iteration)
                log.finish(self.state.history, self.model)
        except BaseException:
            if log is not None:
                log.close()
            if self.is_main and self.saved_iteration is None:
                discard_run(self.out_dir, created)
            raise
        if log is not None:
            log.close()
        return self.state

    def _loop(self, log: TrainingLog | None, end: int) -> None:
        bar = tqdm(total=self.tc.iters, initial=self.state.iteration, desc="train", unit="it", disable=not self.is_main)
        running: dict[str, float] = {}
        start = time.perf_counter()
        loader = iter(self._loader())
        try:
            while self.state.iteration < end:
                losses = self.step(next(loader))
                running.update({k: 0.9 * running.get(k, v) + 0.1 * v for k, v in losses.items() if math.isfinite(v)})
                bar.update(1)
                bar.set_postfix({k: f"{v:.3f}" for k, v in running.items()})
                self._after_step(log, losses, time.perf_counter() - start, end)
        finally:
            bar.close()

    def _after_step(self, log: TrainingLog | None, losses: dict[str, float], seconds: float, end: int) -> None:
        """Log, validate and checkpoint when the iteration just finished calls for it."""
        tc, it = self.tc, self.state.iteration
        if log is not None and (it % tc.log_every == 0 or it == tc.iters):
            log.losses(it, tc.lr_at(it - 1), losses, seconds, self.model)
        if log is not None and self.val_set is not None and tc.val_every and (it % tc.val_every == 0 or it == tc.iters):
            row = self.validate()
            self.state.history.append(row)
            log.validation(row)
        if it % tc.checkpoint_every == 0 or it == end:
            self.save()


@dataclass(frozen=True)
class TrainingRun:
    """What to train, on what, and where its files go."""

    config: str  # preset name or .yaml/.json file: the architecture (the dataset decides the classes)
    data_train: str  # ANNOTATIONS.json:IMAGE_DIR
    data_val: str | None
    out_dir: Path
    weights: str | None = None  # initial weights, e.g. a pruned checkpoint to fine-tune
    device: str | None = None  # None: CUDA when torch sees a GPU
    resume: bool = False  # continue from out_dir/last.pth


def discard_run(out_dir: Path, created: bool) -> None:
    """Remove what a run that wrote no checkpoint left in ``out_dir`` (and the folder, when it made it)."""
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if created:
        shutil.rmtree(out_dir, ignore_errors=True)


def check_out_dir(run: TrainingRun) -> None:
    """``run.out_dir`` can hold this run: a folder (or one to make) without another run's files, unless resumed."""
    check_writable(run.out_dir, folder=True)
    state = run.out_dir / TRAIN_STATE
    if run.resume:
        return check_state_file(state)
    found = [name for name in (TRAIN_STATE, FINAL_MODEL, *RUN_FILES) if (run.out_dir / name).exists()]
    if found:
        raise TrainingError(
            f"{run.out_dir} already holds a training run ({', '.join(found)}): continue it with --resume, "
            "or train into another --out (a new run would mix its files with the old one's)"
        )


def make_trainer(run: TrainingRun, train_config: TrainConfig) -> tuple[Trainer, list[str]]:
    """The trainer for ``run``, resumed when asked, and the layers re-initialised for the dataset's classes."""
    check_out_dir(run)
    config = get_config(run.config)
    train_set, val_set = build_datasets(run.data_train, run.data_val, config, train_config)
    config = config.replace(class_names=train_set.class_names, category_ids=train_set.category_ids)
    device = resolve_device(run.device)
    torch.manual_seed(train_config.seed)
    model, reset = initial_model(config, run.weights)
    trainer = Trainer(config, train_set, val_set, run.out_dir, train_config, model, device)
    if run.resume:
        trainer.resume()
    return trainer, reset
