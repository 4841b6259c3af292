#!/usr/bin/env bash
# The paper's pipeline on the demo model, after benchmarks/train_shapes.sh:
# dense -> sparsity training (L1 on BN scales) -> prune (global |gamma| percentile) -> fine-tune -> fuse
# -> the comparison table.
#   bash benchmarks/slimming.sh [WORKDIR] [RATIO] [LAMBDA]
set -euo pipefail
work=${1:-runs/shapes}
ratio=${2:-0.8}
lambda=${3:-0.05}
data=$work/data
train=(python -m trt_yolact.train --config yolact_shapes
       --data-train "$data/shapes/annotations/instances_train.json:$data/shapes/train"
       --data-val "$data/shapes/annotations/instances_val.json:$data/shapes/val"
       --batch-size 8 --clip-grad 2 --lr-steps 0.7,0.9 --expand-max 2 --workers 1 --val-every 1000 --val-images 100)
"${train[@]}" --weights "$work/dense/model_final.pth" --sparsity "$lambda" --lr 0.003 --warmup-iters 100 \
    --iters 4000 --seed 1 --out "$work/sparse"
python -m trt_yolact.prune --weights "$work/sparse/model_final.pth" --ratio "$ratio" \
    --out "$work/pruned.pth" --report "$work/prune_report.json"
"${train[@]}" --weights "$work/pruned.pth" --lr 0.002 --warmup-iters 100 --iters 2000 --seed 2 --out "$work/finetune"
python -m trt_yolact.fuse --weights "$work/finetune/model_final.pth" --out "$work/pruned_fused.pth"
python benchmarks/paper_table.py --dense "$work/dense/model_final.pth" --pruned "$work/pruned_fused.pth" \
    --ann "$data/shapes_test/annotations/instances_val.json" --images "$data/shapes_test/val"
