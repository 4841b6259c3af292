#!/usr/bin/env bash
# Reproduce the embedded demo model yolact_shapes from scratch on the CPU.
#   bash benchmarks/train_shapes.sh [WORKDIR]        (about 1 h on 2 CPU cores at ~0.3 s per iteration)
# Seeds: dataset 0 (train/val used while training), 12345 (the 500 held-out test images, never trained on).
set -euo pipefail
work=${1:-runs/shapes}
data=$work/data
mkdir -p "$work"
python -m trt_yolact.data.shapes --out "$data/shapes" --train 4000 --val 200 --size 256 --seed 0
python -m trt_yolact.data.shapes --out "$data/shapes_test" --train 0 --val 500 --size 256 --seed 12345
# lr 0.005 with a gradient-norm clip of 2: from scratch, larger steps kill the shared head's ReLUs.
OMP_NUM_THREADS=2 python -m trt_yolact.train --config yolact_shapes \
    --data-train "$data/shapes/annotations/instances_train.json:$data/shapes/train" \
    --data-val "$data/shapes/annotations/instances_val.json:$data/shapes/val" \
    --batch-size 8 --lr 0.005 --warmup-iters 300 --clip-grad 2 --lr-steps 0.7,0.9 --expand-max 2 \
    --iters 12000 --seed 0 --workers 1 --val-every 1000 --val-images 100 --checkpoint-every 200 --out "$work/dense"
python -m trt_yolact.eval --weights "$work/dense/model_final.pth" \
    --ann "$data/shapes_test/annotations/instances_val.json" --images "$data/shapes_test/val" --json "$work/dense_test_ap.json"
