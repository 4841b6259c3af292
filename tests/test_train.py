"""The trainer: it learns, resumes exactly, runs under DDP, and rejects bad input up front."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from trt_yolact.config import BackboneConfig, YolactConfig
from trt_yolact.data.augment import TrainTransform, ValTransform
from trt_yolact.data.coco import CocoDetection, collate_samples
from trt_yolact.data.synthetic import SHAPE_CLASSES, generate_dataset
from trt_yolact.inference.predictor import Predictor
from trt_yolact.metrics.coco_eval import evaluate
from trt_yolact.runtime.torch_runner import TorchRunner
from trt_yolact.train import main as train_main
from trt_yolact.training.trainer import TrainConfig, Trainer, initial_model

TINY = YolactConfig(
    name="tiny",
    backbone=BackboneConfig(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem_channels=16),
    max_size=128,
    class_names=SHAPE_CLASSES,
    category_ids=(1, 2, 3, 4, 5),
    fpn_channels=32,
    proto_channels=32,
    head_channels=32,
    pred_scales=((8,), (16,), (32,), (64,), (128,)),
)


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory):
    return generate_dataset(tmp_path_factory.mktemp("shapes"), 8, 4, 128, seed=3)


def make_trainer(paths, out_dir, iters, transform, seed=0, workers=0, **overrides):
    torch.manual_seed(seed)
    model, _ = initial_model(TINY, None)
    dataset = CocoDetection(paths["train_annotations"], paths["train_images"], transform)
    settings = dict(
        iters=iters,
        batch_size=8,
        lr=0.01,
        warmup_iters=50,
        lr_steps=(0.8,),
        workers=workers,
        val_every=0,
        checkpoint_every=10**9,
        clip_grad=10,
        log_every=50,
        seed=seed,
    )
    config = TrainConfig(**{**settings, **overrides})
    return Trainer(TINY, dataset, None, Path(out_dir), config, model, torch.device("cpu"))


def test_overfitting_eight_images_reaches_high_map(shapes_data, tmp_path):
    torch.set_num_threads(1)
    trainer = make_trainer(shapes_data, tmp_path, 300, ValTransform(128))
    trainer.run()
    model = trainer.model.eval()
    result, _ = evaluate(
        Predictor(TorchRunner(model), TINY),
        shapes_data["train_annotations"],
        shapes_data["train_images"],
        progress=False,
    )
    # An untrained model scores ~0; 300 steps on the same 8 images must learn boxes, classes and masks.
    assert result.bbox["AP"] >= 0.5, result.bbox
    assert result.segm["AP"] >= 0.35, result.segm
    assert (tmp_path / "model_final.pth").is_file() and (tmp_path / "curves.png").is_file()


def test_validation_leaves_the_training_layout_alone(shapes_data, tmp_path):
    """The CPU torch runner converts its model to NHWC in place; the trainer's validation must not."""
    trainer = make_trainer(shapes_data, tmp_path, 1, ValTransform(128))
    trainer.val_set = CocoDetection(shapes_data["val_annotations"], shapes_data["val_images"], ValTransform(128))
    metrics = trainer.validate()
    assert set(metrics) == {"iteration", "box_ap", "mask_ap"}
    assert trainer.model.training
    conv_weights = [p for p in trainer.model.parameters() if p.dim() == 4]
    assert conv_weights and all(p.is_contiguous() for p in conv_weights)
    # What validation relies on: channels_last=False runs NCHW, even for a model already in NHWC.
    nhwc_model = initial_model(TINY, None)[0].to(memory_format=torch.channels_last)
    runner = TorchRunner(nhwc_model, "cpu", channels_last=False)
    assert not runner.channels_last
    assert all(p.is_contiguous() for p in runner.model.parameters() if p.dim() == 4)


def test_resume_continues_exactly(shapes_data, tmp_path):
    torch.set_num_threads(1)
    straight = make_trainer(shapes_data, tmp_path / "a", 6, TrainTransform(128))
    straight.run()
    first = make_trainer(shapes_data, tmp_path / "b", 3, TrainTransform(128))
    first.run()
    second = make_trainer(shapes_data, tmp_path / "b", 6, TrainTransform(128), seed=0)
    second.resume()
    assert second.state.iteration == 3
    second.run()
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_stop_at_then_resume_equals_one_run(shapes_data, tmp_path):
    torch.set_num_threads(1)
    straight = make_trainer(shapes_data, tmp_path / "a", 6, TrainTransform(128))
    straight.run()
    first = make_trainer(shapes_data, tmp_path / "b", 6, TrainTransform(128))
    first.run(stop_at=4)
    assert first.state.iteration == 4
    assert (tmp_path / "b" / "last.pth").is_file() and not (tmp_path / "b" / "model_final.pth").exists()
    second = make_trainer(shapes_data, tmp_path / "b", 6, TrainTransform(128))
    second.resume()
    second.run()
    assert (tmp_path / "b" / "model_final.pth").is_file()
    for (name, a), b in zip(straight.model.state_dict().items(), second.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_resume_drops_log_rows_written_after_the_checkpoint(shapes_data, tmp_path):
    """A run killed between checkpoints has logged iterations that the resumed run repeats: the logs must
    hold each iteration once, in order (they had duplicates, drawn as a line back in time in curves.png)."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    logged = dict(log_every=1, sparsity=1e-4)
    first = make_trainer(shapes_data, out, 6, TrainTransform(128), **logged)
    first.run(stop_at=3)
    checkpoint_at_3 = (out / "last.pth").read_bytes()
    first.run(stop_at=5)  # iterations 4 and 5 logged, then "killed": only the checkpoint at 3 survives
    (out / "last.pth").write_bytes(checkpoint_at_3)
    second = make_trainer(shapes_data, out, 6, TrainTransform(128), **logged)
    second.resume()
    second.run()
    for name in ("log.csv", "gamma.csv"):
        with open(out / name) as handle:
            iterations = [int(row["iteration"]) for row in csv.DictReader(handle)]
        assert iterations == [1, 2, 3, 4, 5, 6], (name, iterations)


def test_augmented_samples_do_not_depend_on_workers(shapes_data, tmp_path):
    one = make_trainer(shapes_data, tmp_path / "w0", 1, TrainTransform(128), workers=0)
    two = make_trainer(shapes_data, tmp_path / "w2", 1, TrainTransform(128), workers=2)
    batch0, batch2 = next(iter(one._loader())), next(iter(two._loader()))
    assert torch.equal(batch0.images, batch2.images)


# ------------------------------------------------------------------------------------------------ DDP
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, paths, out_dir, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    trainer = make_trainer(paths, out_dir, 1, ValTransform(128))
    dataset = trainer.train_set
    shard = collate_samples([dataset[i] for i in range(rank * 4, rank * 4 + 4)])
    trainer.tc.batch_size = 4
    trainer.tc.clip_grad = 0.0  # clipping would act on the averaged gradient only
    trainer.step(shard)  # one SGD step with DDP-averaged gradients
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    if rank == 0:
        torch.save(grads, result_file)
    # Both ranks leave together: a rank tearing gloo down while its peer is still connected can abort
    # ("terminate called without an active exception").
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def test_ddp_gradients_equal_the_single_process_average(shapes_data, tmp_path):
    result_file = tmp_path / "ddp_grads.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), shapes_data, tmp_path / "ddp", result_file), nprocs=2, join=True)
    ddp_grads = torch.load(result_file, weights_only=True)
    # The same two shards, each in its own single-process step: DDP must equal the mean of their gradients.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers: the same reduction order inside each kernel
    per_shard = []
    for rank in range(2):
        trainer = make_trainer(shapes_data, tmp_path / f"single{rank}", 1, ValTransform(128))
        shard = collate_samples([trainer.train_set[i] for i in range(rank * 4, rank * 4 + 4)])
        trainer.tc.batch_size = 4
        trainer.tc.clip_grad = 0.0
        trainer.rank = rank  # the mask-subsampling generator is seeded per rank
        trainer.step(shard)
        per_shard.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})
    assert set(ddp_grads) == set(per_shard[0])
    torch.set_num_threads(threads)
    for name, grad in ddp_grads.items():
        torch.testing.assert_close(grad, (per_shard[0][name] + per_shard[1][name]) / 2, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("device", "local_rank", "backend", "expected"),
    [("cpu", "1", "gloo", "cpu"), ("cuda", "1", "nccl", "cuda:1"), ("cuda:0", "1", "nccl", "cuda:0")],
)
def test_distributed_backend_follows_the_training_device(monkeypatch, device, local_rank, backend, expected):
    # Found on a GPU machine: CPU training there chose NCCL (the machine has CUDA), which cannot carry CPU
    # tensors, and every torchrun rank used cuda:0.
    import trt_yolact.training.trainer as train_module

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls.append(("set_device", str(d))))
    monkeypatch.setattr(train_module.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(train_module.dist, "init_process_group", lambda b: calls.append(("init", b)))
    monkeypatch.setattr(train_module.dist, "get_rank", lambda: int(local_rank))
    rank, world, chosen = train_module.distributed_context(torch.device(device))
    assert (rank, world, str(chosen)) == (int(local_rank), 2, expected)
    assert ("init", backend) in calls
    assert [c for c in calls if c[0] == "set_device"] == ([("set_device", expected)] if backend == "nccl" else [])


def test_torchrun_two_process_gloo_run_completes(shapes_data, tmp_path):
    tiny_config = tmp_path / "tiny.json"
    tiny_config.write_text(json.dumps(TINY.to_dict()))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "trt_yolact.train",
        "--config",
        str(tiny_config),
        "--data-train",
        f"{shapes_data['train_annotations']}:{shapes_data['train_images']}",
        "--iters",
        "2",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "run"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "model_final.pth").is_file()


# ------------------------------------------------------------------------------------------ bad input
def test_bad_input_fails_before_training(shapes_data, tmp_path, capsys):
    train = f"{shapes_data['train_annotations']}:{shapes_data['train_images']}"
    not_coco = tmp_path / "not_coco.json"
    not_coco.write_text('{"images": []}')
    empty_cats = tmp_path / "empty.json"
    empty_cats.write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    missing_image = tmp_path / "missing.json"
    data = json.loads(Path(shapes_data["train_annotations"]).read_text())
    data["images"][0]["file_name"] = "nope.png"
    missing_image.write_text(json.dumps(data))
    cases = {
        "does not exist": ["--data-train", f"{tmp_path / 'none.json'}:{tmp_path}"],
        "images": ["--data-train", f"{not_coco}:{shapes_data['train_images']}"],
        "categor": ["--data-train", f"{empty_cats}:{shapes_data['train_images']}"],
        "nope.png": ["--data-train", f"{missing_image}:{shapes_data['train_images']}"],
        "--resume": ["--data-train", train, "--resume"],
        "--stop-at": ["--data-train", train, "--iters", "10", "--stop-at", "11"],
    }
    for needle, args in cases.items():
        out = tmp_path / f"out_{abs(hash(needle))}"
        code = train_main(["--config", "yolact_shapes", "--out", str(out), *args])
        err = capsys.readouterr().err
        assert code == 2 and needle in err, (needle, err)
        assert not (out / "last.pth").exists()


def test_starting_from_other_classes_reinitialises_only_class_layers(tmp_path):
    from trt_yolact.model.checkpoint import save_checkpoint
    from trt_yolact.model.yolact import Yolact

    torch.manual_seed(0)
    coco_like = Yolact(TINY.replace(class_names=("a", "b", "c"), category_ids=(1, 2, 3)))
    path = save_checkpoint(tmp_path / "start.pth", coco_like)
    model, reset = initial_model(TINY, str(path))
    assert reset == ["prediction_layers.0.conf_layer", "semantic_seg_conv"]
    theirs = coco_like.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith(("prediction_layers.0.conf_layer", "semantic_seg_conv")):
            assert value.shape != theirs[key].shape
        else:
            assert torch.equal(value, theirs[key]), key


def test_fresh_head_starts_confidently_background():
    model, _ = initial_model(TINY, None)
    bias = model.prediction_layers[0].conf_layer.bias.view(-1, TINY.num_classes)
    torch.testing.assert_close(torch.softmax(bias, dim=-1)[:, 0], torch.full((bias.shape[0],), 0.99))
