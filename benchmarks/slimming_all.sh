#!/usr/bin/env bash
# Whole-network pruning of the demo model, after benchmarks/train_shapes.sh (its data and dense.pth, or the
# shipped yolact_shapes): sparsity training with scope all (L1 on every BN scale that ranks a channel group,
# group lasso on the BN-free FPN / protonet / prototype / head groups) -> prune --scope all -> fine-tune -> ship
# as yolact_shapes_slim -> fuse -> the comparison table (benchmarks/results/paper_table_slim.{json,md}).
#   bash benchmarks/slimming_all.sh [WORKDIR]
# The sparsity run is the first SPARSE_ITERS iterations (--stop-at) of a 2,500-iteration schedule: on 2 shared
# CPU cores that was the time there was; its lr never reaches the schedule's steps.
set -euo pipefail
work=${1:-runs/shapes}
data=$work/data
dense=${DENSE:-yolact_shapes}
sparse_iters=${SPARSE_ITERS:-500}
ratio_backbone=${RATIO_BACKBONE:-0.65}
ratio_neck=${RATIO_NECK:-0.5}
test_set=(--ann "$data/shapes_test/annotations/instances_val.json" --images "$data/shapes_test/val")
train=(python -m trt_yolact.train --config yolact_shapes
       --data-train "$data/shapes/annotations/instances_train.json:$data/shapes/train"
       --data-val "$data/shapes/annotations/instances_val.json:$data/shapes/val"
       --batch-size 8 --expand-max 2 --workers 1 --val-every 1000 --val-images 100)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# lambda 0.02 on the BN scales (0.1 drove every |gamma| down together within 200 iterations: with momentum 0.9
# the push per step is ten times lr * lambda) and 0.06 on the BN-free groups, whose norms are 1 to 2.5.
"${train[@]}" --weights "$dense" --sparsity 0.02 --sparsity-scope all --sparsity-neck 0.06 --lr 0.004 \
    --warmup-iters 100 --iters 2500 --lr-steps 0.7,0.9 --clip-grad 5 --checkpoint-every 100 --seed 1 \
    --stop-at "$sparse_iters" --out "$work/sparse_all"
# The shipped model was pruned by weight magnitude (l2): the measurement that made Taylor scores the default
# (benchmarks/RESULTS.md, "Which importance") came after its fine-tuning had started.
python -m trt_yolact.prune --weights "$work/sparse_all/last.pth" --scope all --ratio-backbone "$ratio_backbone" \
    --ratio-neck "$ratio_neck" --importance l2 --input-size 320 --out "$work/slim_raw.pth" \
    --report "$work/prune_all_report.json"
python -m trt_yolact.eval --weights "$work/slim_raw.pth" "${test_set[@]}" --json "$work/slim_raw_ap.json"  # before fine-tuning
# Fine-tuning in three stages: the pruned network starts from no AP at all (65 % of the BN-ranked channels, the
# residual streams' among them, and half the FPN, protonet and head widths are gone): a second, longer
# schedule follows the first, then a third at a lower learning rate.
"${train[@]}" --weights "$work/slim_raw.pth" --lr 0.008 --warmup-iters 100 --iters 3500 \
    --lr-steps 0.6,0.85 --clip-grad 5 --seed 2 --out "$work/finetune_all"
"${train[@]}" --weights "$work/finetune_all/model_final.pth" --lr 0.008 --warmup-iters 100 --iters 6000 \
    --lr-steps 0.7,0.9 --clip-grad 5 --seed 3 --out "$work/finetune_all2"
"${train[@]}" --weights "$work/finetune_all2/model_final.pth" --lr 0.002 --warmup-iters 100 --iters 3000 \
    --lr-steps 0.6,0.85 --clip-grad 5 --seed 4 --out "$work/finetune_all3"
python benchmarks/ship_model.py "$work/finetune_all3/model_final.pth" trt_yolact/weights/yolact_shapes_slim.pth \
    --input-size 320 --name yolact_shapes --note "yolact_shapes_slim: yolact_shapes -> sparsity (scope all) -> prune --scope all -> fine-tune (benchmarks/slimming_all.sh), run at 320 px"
python -m trt_yolact.fuse --weights yolact_shapes_slim --half --out "$work/yolact_shapes_slim_fused.pth"
python -m trt_yolact.eval --weights yolact_shapes,yolact_shapes_pruned,yolact_shapes_slim "${test_set[@]}" \
    --json "$work/slim_test_ap.json"
python benchmarks/paper_table.py --models "yolact_shapes,yolact_shapes_pruned,yolact_shapes_slim,$work/yolact_shapes_slim_fused.pth" \
    "${test_set[@]}" --json benchmarks/results/paper_table_slim.json --md benchmarks/results/paper_table_slim.md
