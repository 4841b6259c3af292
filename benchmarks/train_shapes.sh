#!/usr/bin/env bash
# Reproduce the embedded demo models (yolact_shapes, yolact_shapes_pruned) from scratch on the CPU.
#   bash benchmarks/train_shapes.sh [WORKDIR]        (about 1.5 h on 2 CPU cores with both trainings in parallel)
# Seeds: dataset 0 (train/val used while training), 12345 (the 500 held-out test images, never trained on).
set -euo pipefail
work=${1:-runs/shapes}
data=$work/data
mkdir -p "$work"
python -m trt_yolact.data.shapes --out "$data/shapes" --train 4000 --val 200 --size 256 --seed 0
python -m trt_yolact.data.shapes --out "$data/shapes_test" --train 0 --val 500 --size 256 --seed 12345
common=(--config yolact_shapes
        --data-train "$data/shapes/annotations/instances_train.json:$data/shapes/train"
        --data-val "$data/shapes/annotations/instances_val.json:$data/shapes/val"
        --batch-size 8 --lr 0.005 --warmup-iters 300 --clip-grad 2 --lr-steps 0.7,0.9 --expand-max 2
        --workers 1 --val-every 1000 --val-images 100 --checkpoint-every 200)
# Dense model and sparsity training (L1 on BN scales, network slimming) run side by side, one core each.
OMP_NUM_THREADS=1 python -m trt_yolact.train "${common[@]}" --iters 8500 --seed 0 --out "$work/dense" &
OMP_NUM_THREADS=1 python -m trt_yolact.train "${common[@]}" --iters 7500 --seed 1 --sparsity 0.01 --out "$work/sparse" &
wait
