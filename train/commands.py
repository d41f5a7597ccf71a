"""`segpipe train` and `segpipe eval`."""
from __future__ import annotations

import json
from pathlib import Path


def register(sub, formatter) -> None:
    p = sub.add_parser("train", help="train a U-Net on CARLA frames", formatter_class=formatter,
                       description="Train a U-Net on a CARLA folder (CameraRGB/ + CameraMask/).",
                       epilog="examples:\n"
                              "  segpipe train --config configs/unet_carla.yaml --data ../shared/carla\n"
                              "  segpipe train --config configs/unet_seed.yaml --data DIR --out runs/seed --epochs 60\n"
                              "  segpipe train --config configs/unet_carla.yaml --data DIR --out runs/x --resume\n"
                              "  segpipe train --config configs/unet_carla.yaml --data DIR --precision bf16\n"
                              "  segpipe train --config configs/unet_carla.yaml --data MYDATA --init train/weights/unet_carla.pt")
    p.add_argument("--config", default="configs/unet_carla.yaml", help="training settings (YAML); configs/NAME.yaml finds a shipped one from any folder")
    p.add_argument("--data", required=True, help="CARLA folder with CameraRGB/ and CameraMask/")
    p.add_argument("--out", default="runs/train", help="folder for checkpoints, logs and curves")
    p.add_argument("--epochs", type=int, help="override the config's epochs")
    p.add_argument("--batch-size", type=int, help="override the config's batch size")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the CUDA GPU if PyTorch sees one, else the CPU")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="override the config's: auto is FP16 mixed precision on CUDA and FP32 on the CPU; bf16 "
                        "trains about twice as fast on CPUs with native BF16 (AVX512-BF16, AMX)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", help="start from this checkpoint's weights (fine-tuning; same model)")
    p.add_argument("--max-frames", type=int, help="use only the first N frames (quick checks)")
    p.set_defaults(func=run_train)

    p = sub.add_parser("eval", help="measure a model's pixel accuracy and IoU", formatter_class=formatter,
                       description="Evaluate a checkpoint on the validation runs of a CARLA folder.",
                       epilog="examples:\n"
                              "  segpipe eval --data ../shared/carla\n"
                              "  segpipe eval --data DIR --weights runs/train/best.pt --json metrics.json\n"
                              "  segpipe eval --data ../shared/carla --native     the masks as written, 640x480")
    p.add_argument("--data", required=True, help="CARLA folder with CameraRGB/ and CameraMask/")
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--split", default="val", choices=["val", "train", "all"],
                   help="which frames: the validation runs (as in training), the training runs, or all")
    p.add_argument("--native", action="store_true",
                   help="score at each frame's own size (the labels as `segpipe run --masks` writes them: "
                        "predicted at the model's size, scaled up) instead of at the model's size")
    p.add_argument("--json", help="write the metrics as JSON here")
    p.add_argument("--grid", help="PNG of input / ground truth / prediction (default: beside --json, or none)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: the CUDA GPU if PyTorch sees one, else the CPU")
    p.set_defaults(func=run_eval)


def run_train(args) -> int:
    from train.trainer import train

    best = train(args.data, args.out, config=args.config, epochs=args.epochs, device=args.device,
                 resume=args.resume, batch_size=args.batch_size, max_frames=args.max_frames,
                 init=args.init, precision=args.precision)
    print(f"best epoch {best.get('epoch')}: pixel accuracy {best['pixel_accuracy']:.3f}, "
          f"mIoU {best['miou']:.3f}; checkpoints in {Path(args.out)}")
    return 0


def run_eval(args) -> int:
    from train.evaluate import evaluate_checkpoint, format_table
    from train.errors import InvalidInputError
    from train.paths import writable_file

    grid = args.grid or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if args.json:
        check_eval_output(args.json, "--json", args)      # first: the write test would touch what it names
        writable_file(args.json, "--json", "metrics.json")
        if Path(args.json).resolve() == Path(grid).resolve():   # the grid is --json's name as .png
            raise InvalidInputError(f"--json and --grid both name {grid}: name two files" if args.grid else
                                    f"--json {args.json} is also the grid picture's name: name the metrics .json, "
                                    f"e.g. --json {Path(args.json).with_suffix('.json').name}")
    if grid:
        if Path(grid).suffix.lower() not in (".png", ".jpg", ".jpeg"):
            raise InvalidInputError(f"--grid {grid}: name a .png (or .jpg) file")
        check_eval_output(grid, "--grid" if args.grid else "--json", args)   # (its grid)
        writable_file(grid, "--grid", "grid.png")
    result = evaluate_checkpoint(args.data, args.weights, split=args.split, device=args.device, grid=grid,
                                 native=args.native)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    if grid:
        print(f"wrote {grid}")
    return 0


def check_eval_output(path, flag: str, args) -> None:
    """Refuse an output of eval that would replace what it reads: the checkpoint, the other output, or a
    file among the frames and masks (a new one there would also join the data set)."""
    from train.errors import InvalidInputError

    target = Path(path).resolve()
    if args.weights and target == Path(args.weights).resolve():
        raise InvalidInputError(f"{flag} {path} is the --weights checkpoint: name another file")
    for folder in ("CameraRGB", "CameraMask"):
        inside = (Path(args.data) / folder).resolve()
        if inside == target or inside in target.parents:
            raise InvalidInputError(f"{flag} {path} is inside the data set's {folder}/ folder: write it somewhere "
                                    f"else, e.g. {flag} {Path(path).name}")
