#!/usr/bin/env bash
# The paper's pipeline on the demo model, after benchmarks/train_shapes.sh:
# sparsity-trained model -> prune (global |gamma| percentile) -> fine-tune -> fuse -> the comparison table.
#   bash benchmarks/slimming.sh [WORKDIR] [RATIO]
set -euo pipefail
work=${1:-runs/shapes}
ratio=${2:-0.8}
data=$work/data
python -m trt_yolact.prune --weights "$work/sparse/model_final.pth" --ratio "$ratio" \
    --out "$work/pruned.pth" --report "$work/prune_report.json"
python -m trt_yolact.train --config yolact_shapes --weights "$work/pruned.pth" \
    --data-train "$data/shapes/annotations/instances_train.json:$data/shapes/train" \
    --data-val "$data/shapes/annotations/instances_val.json:$data/shapes/val" \
    --batch-size 8 --lr 0.002 --warmup-iters 100 --clip-grad 2 --lr-steps 0.7,0.9 --expand-max 2 \
    --iters 1500 --seed 2 --workers 1 --val-every 500 --val-images 100 --out "$work/finetune"
python -m trt_yolact.fuse --weights "$work/finetune/model_final.pth" --out "$work/pruned_fused.pth"
python benchmarks/paper_table.py --dense "$work/dense/model_final.pth" --pruned "$work/pruned_fused.pth" \
    --ann "$data/shapes_test/annotations/instances_val.json" --images "$data/shapes_test/val"
