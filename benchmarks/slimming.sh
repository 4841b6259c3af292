#!/usr/bin/env bash
# The paper's pipeline on the demo model, after benchmarks/train_shapes.sh:
# dense -> sparsity training (L1 on BN scales) -> prune (global |gamma| percentile) -> fine-tune -> fuse
# -> the comparison table (benchmarks/results/paper_table.{json,md}).
#   bash benchmarks/slimming.sh [WORKDIR] [RATIO] [LAMBDA]       (about an hour on 2 CPU cores)
#   CONFIG=benchmarks/configs/NAME.yaml ...: the architecture the dense model was trained with (as train_shapes.sh)
set -euo pipefail
work=${1:-runs/shapes}
ratio=${2:-0.8}
lambda=${3:-0.05}
data=$work/data
test_set=(--ann "$data/shapes_test/annotations/instances_val.json" --images "$data/shapes_test/val")
train=(python -m trt_yolact.train --config "${CONFIG:-yolact_shapes}"
       --data-train "$data/shapes/annotations/instances_train.json:$data/shapes/train"
       --data-val "$data/shapes/annotations/instances_val.json:$data/shapes/val"
       --batch-size 8 --clip-grad 5 --lr-steps 0.7,0.9 --expand-max 2 --workers 1 --val-every 1000 --val-images 100)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
"${train[@]}" --weights "$work/dense.pth" --sparsity "$lambda" --lr 0.004 --warmup-iters 100 \
    --iters 4000 --seed 1 --out "$work/sparse"
python -m trt_yolact.prune --weights "$work/sparse/model_final.pth" --ratio "$ratio" \
    --out "$work/pruned_raw.pth" --report "$work/prune_report.json"
python -m trt_yolact.eval --weights "$work/pruned_raw.pth" "${test_set[@]}" --json "$work/pruned_raw_ap.json"  # before fine-tuning
"${train[@]}" --weights "$work/pruned_raw.pth" --lr 0.008 --warmup-iters 100 --iters 4000 --lr-steps 0.6,0.85 --seed 2 \
    --out "$work/finetune"
cp "$work/finetune/model_final.pth" "$work/pruned.pth"
python benchmarks/ship_model.py "$work/pruned.pth" trt_yolact/weights/yolact_shapes_pruned.pth --input-size 320 \
    --note "yolact_shapes_pruned: yolact_shapes -> sparsity -> prune -> fine-tune (benchmarks/slimming.sh), run at 320 px"
python -m trt_yolact.fuse --weights yolact_shapes_pruned --half --out "$work/yolact_shapes_pruned_fused.pth"
# The dense model fused too: a reference row that separates what fusion gains from what pruning gains.
python -m trt_yolact.fuse --weights yolact_shapes --half --out "$work/yolact_shapes_fused.pth"
for set in shapes_test shapes_unseen; do
    python -m trt_yolact.eval --weights yolact_shapes_pruned --ann "$data/$set/annotations/instances_val.json" \
        --images "$data/$set/val" --json "$work/pruned_${set}_ap.json"
done
python benchmarks/paper_table.py \
    --models "yolact_shapes,$work/yolact_shapes_fused.pth,yolact_shapes_pruned,$work/yolact_shapes_pruned_fused.pth" \
    "${test_set[@]}"
