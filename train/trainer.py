"""Training: train_one_epoch / evaluate / train, in the torchvision-references shape.

Outputs in ``--out``: ``best.pt`` and ``last.pt`` (self-contained checkpoints),
``log.jsonl`` (one line per epoch), ``split.json``, ``settings.yaml`` and ``curves.png``.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from train import distributed
from train.checkpoint import DEFAULT_NORMALIZE, load_checkpoint, load_model, make_checkpoint, save_checkpoint
from train.classes import class_table
from train.distributed import World, all_reduce_sum
from train.data import SAME_SCENE, FrameSet, class_frequencies, find_pairs, split_by_runs
from train.errors import InputNotFoundError, InvalidInputError
from train.metrics import ConfusionMatrix, class_weights_from_frequencies, lovasz_softmax, pixel_cross_entropy
from train.model import center_crop, check_input_size, config_to_dict, create_model, is_int
from train.paths import read_yaml, writable_folder
from train.precision import autocast_dtype

log = logging.getLogger("segpipe.train")

DEFAULTS = {
    "model": "unet_carla",
    "model_options": {},
    "input_size": [192, 256],
    "epochs": 100,
    "batch_size": 8,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "class_weights": "inverse_sqrt",   # or "none"
    "class_weight_max": 10.0,          # cap on a rare class's weight (the mean pixel weighs 1)
    "loss": "ce",                      # or "ce+lovasz": adds the Lovasz-softmax term (mIoU itself) in training
    "augment": True,
    "cache_scale": 1.25,               # frames kept this much larger than the model size, for crops
    "crop": None,                      # [H, W] train on random crops this size (default: the whole input size)
    "zoom": [1.0, 1.6],                # scale jitter range; < 1 zooms out as far as the cached frame reaches
    "val_every": 5,                    # every 5th run of frames is validation
    "run_gap": 10,                     # frames closer than this in number belong to one run
    "same_scene": SAME_SCENE,          # so do runs whose boundary frames differ less (grey levels; 0: off)
    "precision": "auto",               # fp16 mixed precision on CUDA, fp32 on the CPU; or fp32 / bf16 / fp16
    "seed": 0,
    "init_weights": None,              # start from this checkpoint's weights (fine-tuning)
    "rare_class_sampling": 0,          # T > 0: draw a class by exp((1 - share) / T), then a frame holding it
    "class_names": None,               # one per class id (default: CARLA's for 23 classes, else "class N")
    "palette": None,                   # [R, G, B] per class id (default: CARLA's, then distinct hues)
}


PROGRESS_EVERY_S = 30.0


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError("--device cuda asked for, but PyTorch sees no CUDA GPU: use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise InvalidInputError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


def normalizer(normalize: dict, device: torch.device):
    mean = torch.tensor(normalize["mean"], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(normalize["std"], device=device).view(1, 3, 1, 1) * 255
    return lambda images: (images.float() - mean) / std


def crop_masks(masks: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """The masks' centre at the logits' size: an unpadded ("valid") U-Net's output covers the centre of its
    input, as in the paper's overlap-tile scheme (a no-op with same padding)."""
    return center_crop(masks, logits.shape[-2:])


def rare_class_draws(presence: torch.Tensor, frequencies: torch.Tensor, temperature: float, count: int,
                     generator: torch.Generator) -> torch.Tensor:
    """``count`` frame indices drawn as DAFormer's rare-class sampling does: a class with probability
    ~ exp((1 - its pixel share) / T) among the classes some frame holds, then a frame that holds it."""
    held = presence.any(0)
    p = torch.where(held, torch.exp((1 - frequencies) / temperature - (1 - frequencies[held]).max() / temperature), 0)
    classes = torch.multinomial(p.float(), count, replacement=True, generator=generator)
    frames = [torch.nonzero(presence[:, c]).flatten() for c in range(presence.shape[1])]
    pick = torch.rand(count, generator=generator)
    return torch.stack([frames[c][int(r * len(frames[c]))] for c, r in zip(classes.tolist(), pick.tolist())])


def warmup_cosine(total_steps: int, warmup: float = 0.1):
    """LR factor per step: linear warm-up, then cosine decay to 2% of the peak.

    Only the step count is saved with the scheduler, so resuming with more epochs stretches the curve."""
    warm = max(1, int(total_steps * warmup))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total_steps - warm))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * t))
    return factor


def train_one_epoch(model, frames: FrameSet, optimizer, scheduler, cfg: dict, device, normalize, class_weights,
                    generator, indices: torch.Tensor, world: World, scaler=None, epoch: int = 0,
                    amp_dtype: torch.dtype | None = None) -> dict:
    """One pass over this rank's share of the training frames; loss averaged over all ranks."""
    model.train()
    total = torch.zeros(2, dtype=torch.float64)  # loss sum, frames
    t0 = time.perf_counter()
    bar = tqdm(frames.batches(cfg["batch_size"], augment=cfg["augment"], generator=generator,
                              indices=indices, crop=cfg["crop"], zoom=tuple(cfg["zoom"])),
               total=math.ceil(len(indices) / cfg["batch_size"]), desc=f"epoch {epoch}", unit="batch",
               leave=False, disable=None if world.is_main else True)
    logged = t0
    for step, (images, masks) in enumerate(bar, 1):
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(normalize(images)).float()     # the loss in FP32, whatever the autocast dtype
        masks = crop_masks(masks, logits)
        loss = pixel_cross_entropy(logits, masks, class_weights)
        if cfg["loss"] == "ce+lovasz":
            loss = loss + lovasz_softmax(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        scheduler.step()
        total += torch.tensor([loss.item() * len(images), len(images)], dtype=torch.float64)
        img_s = total[1].item() / (time.perf_counter() - t0)
        bar.set_postfix(loss=f"{loss.item():.3f}", img_s=f"{img_s:.1f}")
        if bar.disable and world.is_main and time.perf_counter() - logged >= PROGRESS_EVERY_S:
            logged = time.perf_counter()            # no terminal (a log file, CI): a line now and then instead
            log.info("epoch %d: batch %d/%d, loss %.3f, %.1f img/s", epoch, step, bar.total, loss.item(), img_s)
    total = all_reduce_sum(total, world, device)
    return {"train_loss": (total[0] / total[1].clamp(min=1)).item(),
            "train_img_s": total[1].item() / (time.perf_counter() - t0)}


@torch.inference_mode()
def evaluate(model, frames: FrameSet, device, normalize, num_classes: int, batch_size: int = 16,
             class_weights=None, world: World = World()) -> tuple[ConfusionMatrix, float]:
    """Confusion matrix and mean loss over the frames (each rank takes every world.size-th frame)."""
    model.eval()
    cm = ConfusionMatrix(num_classes)
    total = torch.zeros(2, dtype=torch.float64)
    indices = torch.arange(world.rank, len(frames), world.size)
    for images, masks in frames.batches(batch_size, augment=False, indices=indices):
        images, masks = images.to(device), masks.to(device)
        logits = model(normalize(images)).float()
        masks = crop_masks(masks, logits)
        total += torch.tensor([pixel_cross_entropy(logits, masks, class_weights).item() * len(images),
                               len(images)], dtype=torch.float64)
        cm.update(logits.argmax(1), masks)
    cm.matrix = all_reduce_sum(cm.matrix, world, device)
    total = all_reduce_sum(total, world, device)
    return cm, (total[0] / total[1].clamp(min=1)).item()


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RUN_RECORD = ("data", "device", "world_size")     # what a run's settings.yaml holds beside its train: section
FLAGS = {"epochs": "--epochs", "batch_size": "--batch-size", "precision": "--precision", "init_weights": "--init"}


def _num(lo, strict=False):
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                      and (v > lo if strict else v >= lo))


def _size(v):
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(1)(x) for x in v)


CHECKS = {   # key: (test, what a valid value is)
    "model": (lambda v: isinstance(v, str), "a model name, e.g. unet_carla"),
    "model_options": (lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
                      "a mapping of option names, e.g. {base_filters: 32}"),
    "input_size": (_size, "[height, width], e.g. [144, 192]"),
    "epochs": (is_int(1), "an integer >= 1"),
    "batch_size": (is_int(1), "an integer >= 1"),
    "lr": (_num(0, strict=True), "a number > 0, e.g. 0.003"),
    "weight_decay": (_num(0), "a number >= 0"),
    "class_weights": (lambda v: v in ("inverse_sqrt", "none"), "inverse_sqrt or none"),
    "class_weight_max": (_num(0, strict=True), "a number > 0"),
    "loss": (lambda v: v in ("ce", "ce+lovasz"), "ce or ce+lovasz"),
    "augment": (lambda v: isinstance(v, bool), "true or false"),
    "cache_scale": (_num(1), "a number >= 1"),
    "crop": (lambda v: v is None or _size(v), "null or [height, width]"),
    "zoom": (lambda v: isinstance(v, (list, tuple)) and len(v) == 2 and all(_num(0, True)(x) for x in v)
             and v[0] <= v[1], "[low, high] with 0 < low <= high, e.g. [1.0, 1.6]"),
    "val_every": (is_int(2), "an integer >= 2 (every Nth run of frames is validation)"),
    "run_gap": (is_int(1), "an integer >= 1"),
    "same_scene": (_num(0), "a number >= 0 (0 joins runs by frame numbers only)"),
    "precision": (lambda v: v in ("auto", "fp32", "bf16", "fp16"), "auto, fp32, bf16 or fp16"),
    "seed": (is_int(0), "an integer >= 0"),
    "init_weights": (lambda v: v is None or isinstance(v, str), "null or a checkpoint path"),
    "rare_class_sampling": (_num(0), "0 (off) or a temperature > 0, e.g. 0.01"),
    "class_names": (lambda v: v is None or isinstance(v, list) and all(isinstance(n, str) and n for n in v)
                    and len(set(v)) == len(v), "null or a list of distinct names, one per class id, e.g. "
                                               "[road, car, person]"),
    "palette": (lambda v: v is None or isinstance(v, list) and all(
        isinstance(c, list) and len(c) == 3 and all(is_int(0)(x) and x <= 255 for x in c) for c in v),
                "null or a list of [R, G, B] (0-255), one per class id"),
}


def find_config(config: str | Path) -> Path:
    """``config`` as given, or the packaged configs/ file of that name (so the default works from any folder)."""
    path = Path(config)
    if path.is_file():
        return path
    packaged = CONFIG_DIR / path.name
    if path.parent in (Path("."), Path("configs")) and packaged.is_file():     # NAME.yaml, configs/NAME.yaml
        return packaged
    names = ", ".join(p.stem for p in sorted(CONFIG_DIR.glob("unet_*.yaml")))
    raise InputNotFoundError(f"config {path} does not exist: pass a YAML file, or one of the shipped "
                             f"configs ({names}) as configs/NAME.yaml")


def load_train_config(config: str | Path | None, overrides: dict) -> dict:
    """The training settings: DEFAULTS, then the YAML file (a ``train:`` section or top-level keys),
    then ``overrides`` from the flags (None: not given). Every value is checked, so a bad one is one line."""
    settings = dict(DEFAULTS)
    if config:
        path = find_config(config)
        loaded = read_yaml(path)
        if isinstance(loaded, dict) and "train" in loaded:
            outside = sorted(set(loaded) - {"train", *RUN_RECORD})   # a run's settings.yaml is a config too
            if outside:                   # they would be ignored: say so rather than train without them
                raise InvalidInputError(f"config {path} has {outside} beside its train: section: move them into "
                                        f"it (or drop the train: line and keep every key at the top)")
            loaded = loaded["train"]
        if not isinstance(loaded, dict):
            raise InvalidInputError(f"config {path} must be a mapping of settings, e.g. epochs: 40")
        unknown = set(loaded) - set(DEFAULTS)
        if unknown:
            raise InvalidInputError(f"config {path} has unknown keys {sorted(unknown)}: valid are {sorted(DEFAULTS)}")
        settings.update(_check(loaded, lambda key: f"config {path}: {key}"))
    given = {k: v for k, v in overrides.items() if v is not None}
    settings.update(_check(given, lambda key: FLAGS.get(key, key)))
    return settings


def _check(values: dict, name) -> dict:
    checked = {}
    for key, value in values.items():
        test, valid = CHECKS[key]
        if isinstance(value, str) and not test(value):
            try:                                  # YAML reads 3e-3 (no dot) as a string
                value = float(value) if test(float(value)) else value
            except ValueError:
                pass
        if not test(value):
            raise InvalidInputError(f"{name(key)} is {value!r} but must be {valid}")
        checked[key] = value
    return checked


def train(data: str | Path, out: str | Path, config: str | Path | None = None, epochs: int | None = None,
          device: str = "auto", resume: bool = False, batch_size: int | None = None,
          max_frames: int | None = None, init: str | Path | None = None, precision: str | None = None) -> dict:
    """Train a U-Net on a CARLA folder; returns the best validation metrics.

    Under ``torchrun --nproc_per_node N`` each rank trains on its share of the frames (DDP);
    only rank 0 logs and writes. ``batch_size`` is per rank."""
    cfg = load_train_config(config, {"epochs": epochs, "batch_size": batch_size, "precision": precision,
                                 "init_weights": str(init) if init else None})
    out = Path(out)
    if max_frames is not None and max_frames < 1:
        raise InvalidInputError(f"--max-frames {max_frames} must be >= 1")
    if resume and not (out / "last.pt").is_file():
        raise InputNotFoundError(f"--resume: {out / 'last.pt'} does not exist: pass the --out of an earlier run, "
                                 f"or drop --resume to start afresh")
    if not resume and (out / "last.pt").is_file():
        raise InvalidInputError(f"--out {out} already holds a training run (last.pt): pass --resume to continue "
                                f"it, or another --out to start afresh")
    world, dev = distributed.init(pick_device(device))
    amp_dtype = autocast_dtype(dev, cfg["precision"])  # refuses fp16 on the CPU before any work
    if world.is_main:
        writable_folder(out, "--out")
    torch.manual_seed(cfg["seed"])
    size = tuple(cfg["input_size"])
    model = create_model(cfg["model"], **cfg["model_options"])
    check_input_size(model.config, *size, setting="input_size")
    if cfg["crop"]:
        check_input_size(model.config, *cfg["crop"], setting="crop")
        if cfg["crop"][0] > size[0] or cfg["crop"][1] > size[1]:
            raise InvalidInputError(f"crop {cfg['crop']} is larger than input_size {list(size)}: crops are cut "
                                    f"from frames of the input size; use a smaller crop or none")
    state = load_checkpoint(out / "last.pt") if resume else None
    if state is not None and "optimizer" not in state:
        raise InvalidInputError(f"--resume: {out / 'last.pt'} holds weights only, no training state (a shipped or "
                                f"slimmed checkpoint): fine-tune from it with --init {out / 'last.pt'} --out NEW")
    if state is not None:                 # before any data is read: a run that cannot go on says so now
        if state["model_config"] != config_to_dict(model.config):
            raise InvalidInputError(f"--resume: {out / 'last.pt'} is a {state['model']} with other settings than "
                                    f"this config builds: resume with the run's own config "
                                    f"({out / 'settings.yaml'} records it)")
        if state["epoch"] + 1 >= cfg["epochs"]:
            raise InvalidInputError(f"--resume: {out} already trained {state['epoch'] + 1} of {cfg['epochs']} "
                                    f"epochs: pass --epochs N (more than {state['epoch'] + 1}) to train longer")
        before = state.get("settings") or {}
        changed = [f"{k} {before[k]} -> {cfg[k]}" for k in cfg if k != "epochs" and k in before and before[k] != cfg[k]]
        if changed:     # the optimizer and schedule state go on as saved: lr, for one, is the saved one
            log.warning("--resume: settings changed since %s started (%s): the run goes on with the saved optimizer "
                        "and schedule, so it is not the run a fresh start with them would be", out, "; ".join(changed))
        cfg.update({k: before[k] for k in ("lr", "weight_decay") if k in before})   # recorded as they act
    num_classes = model.config.num_classes
    for key in ("class_names", "palette"):
        if cfg[key] is not None and len(cfg[key]) != num_classes:
            raise InvalidInputError(f"{key} lists {len(cfg[key])} classes but the model has {num_classes} "
                                    f"(model_options num_classes): give one per class id")
    class_names, palette = class_table(num_classes, cfg["class_names"], cfg["palette"])
    if cfg["init_weights"]:               # before any data is read or written: a misfit says so at once
        init, _ = load_model(cfg["init_weights"])
        if init.config != model.config:
            raise InvalidInputError(f"--init {cfg['init_weights']} is a {init.config} but the config builds a "
                                    f"{model.config}: use a checkpoint of the same model")
        model.load_state_dict(init.state_dict())

    pairs = find_pairs(data)
    if max_frames:
        pairs = pairs[:max_frames]
    train_pairs, val_pairs = split_by_runs(pairs, cfg["val_every"], cfg["run_gap"], cfg["same_scene"])
    split = {"train": [p.stem for p in train_pairs], "val": [p.stem for p in val_pairs]}
    recorded = state.get("split") if state is not None else None
    if state is not None and recorded is None and (out / "split.json").is_file():
        recorded = json.loads((out / "split.json").read_text())    # a run from before checkpoints kept it
    if recorded is not None and recorded != split:
        was = len(recorded["train"]) + len(recorded["val"])
        raise InvalidInputError(f"--resume: the frames of {data} split differently from when {out} started "
                                f"({len(pairs)} frames now, {was} then: frames added or removed, another "
                                f"--max-frames, or val_every/run_gap/same_scene changed): resume with the same "
                                f"data, --max-frames and config, or start afresh with another --out")
    if world.is_main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "split.json").write_text(json.dumps(split, indent=1))
        (out / "settings.yaml").write_text(yaml.safe_dump(
            {"train": cfg, "data": str(data), "device": str(dev), "world_size": world.size}))
    train_set = FrameSet(train_pairs, size, scale=cfg["cache_scale"] if cfg["augment"] else 1.0,
                         num_classes=num_classes)
    val_set = FrameSet(val_pairs, size, num_classes=num_classes)

    weights = None
    frequencies = class_frequencies(train_set.masks, num_classes)
    if cfg["class_weights"] == "inverse_sqrt":
        weights = class_weights_from_frequencies(frequencies, max_weight=cfg["class_weight_max"]).to(dev)
    presence = torch.stack([class_frequencies(m, num_classes) > 0 for m in train_set.masks]) \
        if cfg["rare_class_sampling"] else None

    model.to(dev)
    if dev.type == "cuda" or amp_dtype is not None:
        # faster convs; FP32 on the CPU stays NCHW (1.3x slower) so the shipped run reproduces digit for digit
        model.to(memory_format=torch.channels_last)
    sampler = DistributedSampler(range(len(train_set)), num_replicas=world.size, rank=world.rank,
                                 shuffle=True, seed=cfg["seed"])
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    steps = cfg["epochs"] * math.ceil(len(sampler) / cfg["batch_size"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None  # bf16 needs no loss scaling
    if world.is_main:
        log.info("data: %d train / %d val frames from %s; %d process(es) on %s, %s",
                 len(train_pairs), len(val_pairs), data, world.size, dev, str(amp_dtype or torch.float32).removeprefix("torch."))
    normalize = normalizer(DEFAULT_NORMALIZE, dev)
    generator = torch.Generator()

    start_epoch, best = 0, {"miou": -1.0}
    if state is not None:
        model.load_state_dict(state["state_dict"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_random_state(state, dev, scaler)
        start_epoch, best = state["epoch"] + 1, state.get("best", best)
        if world.is_main:
            log.info("resumed from %s at epoch %d", out / "last.pt", start_epoch)
    net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None) \
        if world.distributed else model

    history = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()] \
        if resume and (out / "log.jsonl").exists() else []
    history = [h for h in history if h["epoch"] < start_epoch]
    for epoch in range(start_epoch, cfg["epochs"]):
        t0 = time.perf_counter()
        sampler.set_epoch(epoch)
        generator.manual_seed(cfg["seed"] + 1000 * epoch + world.rank)  # augmentation differs per rank
        indices = torch.tensor(list(sampler))
        if cfg["rare_class_sampling"]:      # the same draws on every rank (seeded by epoch), this rank's share
            draws = rare_class_draws(presence, frequencies, cfg["rare_class_sampling"], len(train_set),
                                     torch.Generator().manual_seed(cfg["seed"] + epoch))
            indices = draws[world.rank::world.size]
        stats = train_one_epoch(net, train_set, optimizer, scheduler, cfg, dev, normalize, weights, generator,
                                indices, world, scaler, epoch, amp_dtype)
        cm, val_loss = evaluate(model, val_set, dev, normalize, num_classes, class_weights=weights, world=world)
        metrics = cm.summary(class_names)
        is_best = metrics["miou"] > best["miou"]
        if is_best:
            best = {"epoch": epoch, **metrics}
        if not world.is_main:
            continue
        row = {"epoch": epoch, **stats, "val_loss": val_loss, "miou": metrics["miou"],
               "pixel_accuracy": metrics["pixel_accuracy"], "lr": scheduler.get_last_lr()[0],
               "epoch_s": time.perf_counter() - t0}
        history.append(row)
        (out / "log.jsonl").write_text("".join(json.dumps(h) + "\n" for h in history))
        ckpt = make_checkpoint(model, cfg["model"], size, class_names=class_names, palette=palette,
                               epoch=epoch, metrics=metrics, best=best,
                               settings=cfg, split=split, optimizer=optimizer.state_dict(),
                               scheduler=scheduler.state_dict())
        ckpt.update(random_state(dev, scaler))
        save_checkpoint(ckpt, out / "last.pt")
        if is_best:
            save_checkpoint(ckpt, out / "best.pt")
        tqdm.write(f"epoch {epoch}: loss {stats['train_loss']:.3f} val_loss {val_loss:.3f} "
                   f"pixel_acc {metrics['pixel_accuracy']:.3f} mIoU {metrics['miou']:.3f} "
                   f"({row['epoch_s']:.0f}s){' *' if is_best else ''}")
        plot_curves(history, out / "curves.png", cfg["loss"])
    distributed.shutdown(world)
    return best


RANDOM_STATE_KEYS = ("rng_state", "cuda_rng_state", "scaler")


def random_state(device: torch.device, scaler=None) -> dict:
    """What a resumed run needs beyond the optimizer to go on bit for bit: the global RNG (dropout draws
    from it) and the FP16 loss scale. ByteTensors and numbers, so the checkpoint loads with weights_only."""
    state = {"rng_state": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng_state"] = torch.cuda.get_rng_state(device)
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    return state


def restore_random_state(state: dict, device: torch.device, scaler=None) -> None:
    """Undo ``random_state``; a checkpoint from an older segpipe lacks it, and resumes as before."""
    if "rng_state" in state:
        torch.set_rng_state(state["rng_state"])
    if "cuda_rng_state" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng_state"], device)
    if "scaler" in state and scaler is not None:
        scaler.load_state_dict(state["scaler"])


def plot_curves(history: list[dict], path: Path, loss: str = "ce") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history],
             label="train (CE + Lovasz)" if loss == "ce+lovasz" else "train")
    ax1.plot(epochs, [h["val_loss"] for h in history], label="val (CE)")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    ax2.plot(epochs, [h["pixel_accuracy"] for h in history], label="pixel accuracy")
    ax2.plot(epochs, [h["miou"] for h in history], label="mIoU")
    ax2.set(xlabel="epoch", ylim=(0, 1), title="validation")
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def slim_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Drop the training state: what ships is only what inference needs."""
    ckpt = load_checkpoint(src)
    for key in ("optimizer", "scheduler", *RANDOM_STATE_KEYS):
        ckpt.pop(key, None)
    save_checkpoint(ckpt, dst)
