"""`segpipe export`, `segpipe build` and `segpipe engines`."""
from __future__ import annotations

import json
from pathlib import Path

from engine import BACKENDS, PRECISIONS


def register(sub, formatter) -> None:
    p = sub.add_parser("export", help="export the model to ONNX (uint8 frames in, uint8 labels out)",
                       formatter_class=formatter,
                       description="Export a checkpoint to ONNX with a dynamic batch axis. The graph takes uint8 RGB "
                                   "frames (batch, 3, H, W) and returns uint8 class ids (batch, H, W): normalisation "
                                   "and argmax are inside. The export is checked with onnx.checker and compared with "
                                   "PyTorch through onnxruntime on real CARLA frames (labels agree on >= 99.9% of "
                                   "pixels, logits max |diff| <= 1e-3). The settings used are written to FILE.json.",
                       epilog="examples:\n"
                              "  segpipe export --onnx unet.onnx\n"
                              "  segpipe export --onnx unet_480.onnx --size 480x640\n"
                              "  segpipe export --onnx best.onnx --weights runs/train/best.pt")
    p.add_argument("--onnx", required=True, metavar="FILE", help="where to write the .onnx file")
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--size", metavar="HxW", help="input size (default: the checkpoint's)")
    p.set_defaults(func=run_export)

    p = sub.add_parser("build", help="build the inference engine ahead of time (TensorRT on a GPU)",
                       formatter_class=formatter,
                       description="Prepare what `segpipe run` will use, so the first run starts at once: a TensorRT "
                                   "engine on an NVIDIA GPU (FP16, checked against FP32 on CARLA frames), or on a "
                                   "CPU the ONNX export and the speed race of torch (BF16 where the CPU has it) "
                                   "against onnxruntime. Results are cached "
                                   "(see `segpipe engines`) under a key of ONNX hash, TensorRT version, GPU, "
                                   "precision, input size and batch range; a change of any of them rebuilds.",
                       epilog="examples:\n"
                              "  segpipe build                                   whatever `segpipe run` will use here\n"
                              "  segpipe build --backend tensorrt --max-batch 16\n"
                              "  segpipe build --backend tensorrt --size 480x640 --weights runs/train/best.pt\n"
                              "  segpipe build --force                           ignore the cache and rebuild")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="which backend to prepare")
    p.add_argument("--precision", default="fp16", choices=PRECISIONS, help="fp16: reduced precision where it is fast and matches FP32 (FP16 on GPUs, BF16 on CPUs "
                        "with native BF16), else FP32")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch the engine accepts")
    p.add_argument("--size", metavar="HxW", help="input size (default: the checkpoint's)")
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--device", help="cpu or cuda[:N] (default: a GPU if there is one)")
    p.add_argument("--force", action="store_true", help="rebuild even if a verified cache entry exists")
    p.set_defaults(func=run_build)

    p = sub.add_parser("engines", help="list the engine cache with each entry's key", formatter_class=formatter,
                       description="List the cached TensorRT engines, ONNX exports and CPU backend choices in "
                                   "$SEGPIPE_CACHE (default ~/.cache/segpipe/engines), each with the key it was "
                                   "built for and whether it still verifies.",
                       epilog="examples:\n"
                              "  segpipe engines\n"
                              "  segpipe engines --json\n"
                              "  SEGPIPE_CACHE=/data/engines segpipe engines\n"
                              "  segpipe engines --clear                         delete every entry")
    p.add_argument("--json", action="store_true", help="print the entries as JSON")
    p.add_argument("--clear", action="store_true", help="delete all cache entries")
    p.set_defaults(func=run_engines)


def run_export(args) -> int:
    import onnx

    from engine import cache
    from engine.fused import fused_segmenter
    from engine.loader import model_info
    from engine.onnx_export import (INPUT_NAME, LABEL_AGREEMENT_MIN, LOGITS_MAX_ABS_DIFF, OPSET, OUTPUT_NAME,
                                    export_onnx)
    from train.checkpoint import load_model
    from train.paths import writable_file

    writable_file(args.onnx, "--onnx", "unet.onnx")
    model, ckpt = load_model(args.weights)
    info = model_info(args.weights, ckpt, model, args.size)
    report = export_onnx(fused_segmenter(model, info.normalize), info.input_size, args.onnx)
    h, w = info.input_size
    oh, ow = info.output_size
    settings = {
        "weights": info.weights, "checkpoint_sha256": info.sha256, "model": info.name, "input_size": [h, w],
        "opset": OPSET, "onnx": onnx.__version__, "sha256": report.sha256,
        "input": {"name": INPUT_NAME, "dtype": "uint8", "shape": ["batch", 3, h, w], "layout": "RGB NCHW"},
        "output": {"name": OUTPUT_NAME, "dtype": "uint8", "shape": ["batch", oh, ow], "meaning": "class id"},
        "normalize": info.normalize, "class_names": info.class_names,
        "check": {"label_agreement": report.label_agreement, "label_agreement_min": LABEL_AGREEMENT_MIN,
                  "logits_max_abs_diff": report.logits_max_abs_diff, "logits_max_abs_diff_max": LOGITS_MAX_ABS_DIFF},
    }
    sidecar = Path(str(report.path) + ".json")
    cache._atomic_write(sidecar, json.dumps(settings, indent=2).encode())
    size_mb = report.path.stat().st_size / 1e6
    print(f"wrote {report.path} ({size_mb:.1f} MB) in {report.seconds:.1f} s: uint8 {INPUT_NAME} (batch, 3, {h}, {w}) "
          f"-> uint8 {OUTPUT_NAME} (batch, {oh}, {ow})")
    print(f"checked: onnx.checker ok; {report.summary()}; settings in {sidecar}")
    return 0


def run_build(args) -> int:
    import engine
    from engine import cache
    from train.errors import InvalidInputError

    if (problem := cache.unwritable(cache.cache_dir())) is not None:     # what build makes would not be kept
        raise InvalidInputError(f"cannot write the engine cache {cache.cache_dir()} ({problem}): set SEGPIPE_CACHE "
                                f"to a folder you can write to")
    b = engine.load(args.weights, backend=args.backend, precision=args.precision, device=args.device,
                    max_batch=args.max_batch, input_size=args.size, rebuild=args.force)
    h, w = b.input_size
    print(f"ready: {b.name} {b.precision} on {b.device} at {h}x{w}, batch 1..{b.max_batch} ({b.reason})")
    if b.device.type == "cpu" and args.backend in ("auto", "cpu") and b.max_batch > 1:
        live = engine.load(args.weights, backend=args.backend, precision=args.precision, device=args.device,
                           max_batch=1, input_size=args.size, rebuild=args.force)  # `live` races at batch 1
        print(f"live (batch 1): {live.name} {live.precision} ({live.reason})")
    key = getattr(b, "key", None)
    if key:
        print(f"engine key {cache.key_digest(key)}: {json.dumps(key, sort_keys=True)}")
    print(f"cache: {cache.cache_dir()}")
    return 0


def run_engines(args) -> int:
    from engine import cache

    root = cache.cache_dir()
    if args.clear:
        print(f"removed {cache.clear(root)} files from {root}")
        return 0
    rows = cache.entries(root)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print(f"no cached engines in {root} (build one with `segpipe build`)")
        return 0
    print(format_entries(rows, root))
    return 0


def format_entries(rows: list[dict], root) -> str:
    lines = [f"{len(rows)} {'entry' if len(rows) == 1 else 'entries'} in {root}",
             f"{'file':<38} {'MB':>6}  {'created':<19}  {'status':<8} key"]
    for r in rows:
        key = {k: v for k, v in r.get("key", {}).items() if k != "kind"}
        compact = " ".join(f"{k}={_short(v)}" for k, v in sorted(key.items()))
        status = "ok" if r.get("ok") else "STALE"
        lines.append(f"{r['file']:<38} {r.get('bytes', 0) / 1e6:>6.1f}  {r.get('created', '?')[:19]:<19}  "
                     f"{status:<8} {compact}" + ("" if r.get("ok") else f"  ({r.get('reason')})"))
    return "\n".join(lines)


def _short(v) -> str:
    if isinstance(v, list):
        return "x".join(str(x) for x in v) if len(v) == 2 and all(isinstance(x, int) for x in v) else str(v)
    if isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v):
        return v[:12]  # a SHA-256: the prefix is enough to tell entries apart
    return str(v).replace(" ", "_")
