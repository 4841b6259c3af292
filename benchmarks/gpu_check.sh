#!/usr/bin/env bash
# One-shot check on a GPU machine that may be lent for a few minutes only; needs no network.
#   bash benchmarks/gpu_check.sh [OUTDIR]          (default OUTDIR: gpu_check_out; about 7 minutes on an H200)
#   SMOKE=1 bash benchmarks/gpu_check.sh OUTDIR    (the same steps, tiny, on the CPU: checks the script itself)
#   STEPS="cuda_tests base" TESTS="tests/test_train.py" bash benchmarks/gpu_check.sh   (some steps; some tests)
# Every step has its own time limit and the next one runs even when one fails; OUTDIR/summary.txt lists each
# step's exit status and seconds. Steps, most valuable first:
#   cuda_tests  the tests that need a GPU (CPU vs CUDA post-processing, the CUDA-graph pipeline)
#   pipeline    the device pipeline's target: benchmarks/gpu_check.py --target (yolact_base FP16, batch 8,
#               forward-only vs end to end in one CUDA graph, post-processing ms), then bench's three
#               pipelines (dynamic, static, graph) for the demo model at batch 8
#   base        benchmarks/gpu_check.py: yolact_base 550 dense vs pruned (internal 0.6, all 0.5; fused), FP32/FP16,
#               batch 1/8, NCHW vs NHWC, CUDA graphs, GPU post-processing, peak memory
#   bench       the four demo models through the torch runner on CUDA, FP32/FP16, batch 1/8/32
#   eval        box/mask AP of both shipped demo models on CUDA, FP32 and FP16, on the shapes test set
#               (regenerated from its seed; its annotation digest tells whether it equals the CPU run's)
#   demo        the realtime demo on CUDA over a short generated video
#   tests       the whole test suite on the GPU machine
# Results go into at most ten files: summary.txt, steps.log, target.json, pipeline_bench.md, base.json,
# bench.json, bench.md, bench.png, eval.json, tests.log.
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(realpath -m "${1:-gpu_check_out}")
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
smoke=${SMOKE:-0}
if [ "$smoke" = 1 ]; then
    device=cpu precisions=fp32 batches=1 iters=2 images=12 frames=8
    base_args=(--device cpu --size 128 --iters 2 --batches 1)
    target_args=(--device cpu --size 128 --iters 2 --target-batch 2) pipeline_precision=fp32 pipeline_batch=2
else
    device=cuda precisions=fp32,fp16 batches=1,8,32 iters=30 images=500 frames=150
    base_args=(--iters 20)
    target_args=(--iters 30) pipeline_precision=fp16 pipeline_batch=8
fi

steps=" ${STEPS:-cuda_tests pipeline base data fuse bench eval video demo tests} "
step() {  # step NAME LIMIT_S COMMAND...: runs COMMAND, logs it, records its status; never stops the script
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    [[ $steps == *" $name "* ]] || return 0
    echo "== $name: $*" | tee -a "$out/steps.log"
    timeout "$limit" "$@" >> "$out/steps.log" 2>&1
    rc=$?
    printf '%-10s rc=%-3s %4d s\n' "$name" "$rc" $((SECONDS - start)) | tee -a "$out/summary.txt"
}

{
    date -u +%FT%TZ
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>&1 || true
    $py -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
} | tee "$out/summary.txt"

step cuda_tests 90 $py -m pytest -q -p no:cacheprovider -rs tests/test_postprocess.py::test_same_code_on_cuda \
    tests/test_engine_builder.py::test_real_build_and_run tests/test_device_pipeline.py::test_graph_pipeline_on_cuda

step pipeline 150 bash -c "$py benchmarks/gpu_check.py --target --json '$out/target.json' ${target_args[*]} &&
    $py -m trt_yolact.bench --weights yolact_shapes --backends torch --device $device --precision $pipeline_precision \
    --batch $pipeline_batch --pipelines dynamic,static,graph --iters $iters --md '$out/pipeline_bench.md'"

step base 150 $py benchmarks/gpu_check.py --json "$out/base.json" "${base_args[@]}"

step data 60 $py -m trt_yolact.data.shapes --out "$work/shapes_test" --train 0 --val "$images" --seed 12345 --size 256
ann=$work/shapes_test/annotations/instances_val.json
[ -f "$ann" ] && echo "shapes_test annotations sha256 $(sha256sum < "$ann" | cut -c1-16)" | tee -a "$out/summary.txt"

step fuse 60 bash -c "$py -m trt_yolact.fuse --weights yolact_shapes --half --out '$work/yolact_shapes_fused.pth' &&
    $py -m trt_yolact.fuse --weights yolact_shapes_pruned --half --out '$work/yolact_shapes_pruned_fused.pth'"

step bench 150 $py -m trt_yolact.bench \
    --weights "yolact_shapes,$work/yolact_shapes_fused.pth,yolact_shapes_pruned,$work/yolact_shapes_pruned_fused.pth" \
    --backends torch --device "$device" --precision "$precisions" --batch "$batches" --iters "$iters" \
    --pipelines dynamic --json "$out/bench.json" --md "$out/bench.md" --plot "$out/bench.png" --cache "$work/cache"

step eval 150 $py -m trt_yolact.eval --weights yolact_shapes,yolact_shapes_pruned --device "$device" \
    --backends torch --precision "$precisions" --ann "$ann" --images "$work/shapes_test/val" \
    --json "$out/eval.json" --cache "$work/cache"

step video 30 $py - "$work/shapes_test/val" "$work/clip.mp4" "$frames" <<'EOF'
import sys
from pathlib import Path

import cv2

folder, path, count = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
frames = sorted(folder.glob("*.png"))
writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 25, (320, 240))
for index in range(count):
    writer.write(cv2.resize(cv2.imread(str(frames[index % len(frames)])), (320, 240)))
writer.release()
EOF
step demo 60 $py -m trt_yolact.demo --source "$work/clip.mp4" --weights yolact_shapes --device "$device" \
    --batch 4 --no-display --out "$work/demo.mp4"

step tests 170 bash -c "$py -m pytest -q -p no:cacheprovider -rs ${TESTS:-tests} > '$out/tests.log' 2>&1"
tail -n 15 "$out/tests.log" 2>/dev/null
echo "== summary"
cat "$out/summary.txt"
