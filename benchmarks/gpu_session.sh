#!/usr/bin/env bash
# Everything the issues ask of a GPU, in few full device calls (30 device-minutes a session, 10 a call).
#
# Here, once:   python benchmarks/gpu_pack.py pack        (.gpu/: the drive video + masks; .whl/: PyAV)
# Device call:  carry [".gpu", ".whl"], command: bash benchmarks/gpu_session.sh PHASE [PHASE ...]
#   check    GPU tests (FP16 parity, CUDA-graph replay, GPU stages), the model bench and
#            validation scores per backend and precision                                  ~3 min
#   stream   pipeline bench (each stage, pipeline, naive loop) and live latency at 720p    ~3 min
#   train    configs/unet_gpu.yaml, for the accuracy targets                                 ~7 min
#   seed     the base-32 seed model (12 epochs at 240x320), benched at 480x640 (roofline)  ~3 min
# Results: $OUT/results.tgz (logs + JSON) and slim checkpoints $OUT/*.pt; score a checkpoint here on the
# original frames with `segpipe eval --data ../shared/carla --weights X.pt`. BACKEND=cpu runs the
# same plumbing without a GPU.
set -uo pipefail
OUT=${OUT:-/tmp/segpipe-out}
BACKEND=${BACKEND:-torch-cuda}
DEVICE=$([ "$BACKEND" = cpu ] && echo cpu || echo cuda)
MODEL_BACKENDS=$([ "$BACKEND" = cpu ] && echo cpu || echo tensorrt,torch-cuda,torch-cuda-compile)
WORK="$OUT/work" DATA=/tmp/segpipe-gpu
mkdir -p "$WORK"
export PYTHONUNBUFFERED=1
if ! python3 -c "import av" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null || echo "(no editable install: running from the checkout)"
segpipe() { python3 -m pipeline.cli "$@"; }     # the checkout's segpipe, wherever pip put its script
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$WORK/gpu.txt" 2>&1
[ -d "$DATA/carla" ] || python3 benchmarks/gpu_pack.py unpack "$DATA" || exit 1

step() {   # step NAME CMD...: log to $WORK/NAME.log, print its tail and how long it took
    local name=$1 t=$SECONDS; shift
    echo "== $name: $*"
    "$@" > "$WORK/$name.log" 2>&1
    echo "== $name: rc $? in $((SECONDS - t)) s"
    tail -n 20 "$WORK/$name.log"
}
slim() { python3 -c "import sys; from train.trainer import slim_checkpoint; slim_checkpoint(*sys.argv[1:])" "$@"; }

for phase in "$@"; do
    case $phase in
    check)
        step gpu_tests python3 -m pytest -m gpu -v -p no:cacheprovider tests
        step bench_model segpipe bench --model-only --backend "$MODEL_BACKENDS" --precision fp16,fp32 \
            --batch 1,8,32 --json "$WORK/bench_model.json"
        step parity python3 benchmarks/precision_parity.py --data "$DATA/carla" --json "$WORK/parity.json"
        ;;
    stream)   # live latency is measured to the browser view's publish (no viewer needed)
        step bench_pipeline segpipe bench --video .gpu/carla_drive.mp4 --backend "$BACKEND" \
            --json "$WORK/bench_pipeline.json"
        step bench_pipeline_720p segpipe bench --video "$DATA/drive_720p.mp4" --backend "$BACKEND" \
            --json "$WORK/bench_pipeline_720p.json"
        step live_720p segpipe live "$DATA/drive_720p.mp4" --realtime --serve 127.0.0.1:8097 --backend "$BACKEND" \
            --stats "$WORK/live_720p.json"
        ;;
    train)
        step train_gpu segpipe train --config configs/unet_gpu.yaml --data "$DATA/carla" \
            --out "$WORK/gpu_run" --device "$DEVICE"
        slim "$WORK/gpu_run/best.pt" "$OUT/unet_gpu.pt"
        ;;
    seed)
        python3 -c "import sys, yaml; c = yaml.safe_load(open('configs/unet_seed.yaml')); \
c['train'].update(input_size=[240, 320], epochs=12); yaml.safe_dump(c, open(sys.argv[1], 'w'))" "$WORK/seed.yaml"
        step train_seed segpipe train --config "$WORK/seed.yaml" --data "$DATA/carla" --out "$WORK/seed_run" \
            --device "$DEVICE"
        slim "$WORK/seed_run/best.pt" "$OUT/unet_seed.pt"
        step bench_seed_480p segpipe bench --model-only --weights "$OUT/unet_seed.pt" --backend "$BACKEND" \
            --precision fp16,fp32 --batch 1,8,32 --size 480x640 --json "$WORK/bench_seed_480p.json"
        ;;
    *) echo "unknown phase $phase: use check, stream, train or seed" >&2; exit 2 ;;
    esac
done
tar czf "$OUT/results.tgz" -C "$WORK" --exclude='*.pt' .
echo "results: $OUT/results.tgz $(ls "$OUT"/*.pt 2>/dev/null | tr '\n' ' ')"
