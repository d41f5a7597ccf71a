"""Checkpoints that carry everything inference needs, loaded safely.

A checkpoint is a plain dict (tensors, numbers, strings, lists) so it loads with
``torch.load(..., weights_only=True)``; a file that would need to run code is refused.
"""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import torch

from train.classes import CARLA_CLASSES, CARLA_PALETTE, class_table
from train.errors import CheckpointError, InputNotFoundError
from train.model import UNet, config_from_dict, config_to_dict

FORMAT = "segpipe-unet/1"
DEFAULT_WEIGHTS = Path(__file__).parent / "weights" / "unet_carla.pt"
# ImageNet statistics on [0, 1] inputs; the model takes uint8 RGB and divides by 255 first.
DEFAULT_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
REQUIRED_KEYS = ("format", "model", "model_config", "state_dict", "input_size", "normalize", "class_names", "palette")


def weights_digest(state_dict: dict) -> str:
    """SHA-256 of the weights' names and bytes: torch.load does not check the zip's CRCs, so a flipped
    byte in a checkpoint would otherwise load as a silently different model."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        h.update(name.encode())
        h.update(state_dict[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make_checkpoint(model: UNet, model_name: str, input_size: tuple[int, int], *,
                    normalize: dict | None = None, class_names=CARLA_CLASSES, palette=CARLA_PALETTE,
                    **extra) -> dict:
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {
        "format": FORMAT,
        "model": model_name,
        "model_config": config_to_dict(model.config),
        "state_dict": state_dict,
        "weights_sha256": weights_digest(state_dict),
        "input_size": [int(input_size[0]), int(input_size[1])],
        "normalize": dict(normalize or DEFAULT_NORMALIZE),
        "class_names": list(class_names),
        "palette": [list(c) for c in palette],
        **extra,
    }


def save_checkpoint(ckpt: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(ckpt, tmp)
    tmp.replace(path)  # never leave a half-written checkpoint under the real name


def resolve_weights(weights: str | Path | None) -> Path:
    return Path(weights) if weights else DEFAULT_WEIGHTS


def load_checkpoint(weights: str | Path | None = None) -> dict:
    """Load and validate a checkpoint (the shipped default when ``weights`` is None)."""
    path = resolve_weights(weights)
    if not path.exists():
        hint = "train one with `segpipe train`" if weights else "reinstall segpipe or pass --weights"
        raise InputNotFoundError(f"checkpoint {path} does not exist: {hint}")
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a directory: pass the .pt file inside it (e.g. {path}/best.pt)")
    if path.suffix.lower() in (".onnx", ".engine", ".plan", ".ep"):
        raise CheckpointError(f"{path} is an exported model: pass the .pt checkpoint it was made from (segpipe makes "
                              f"and caches its ONNX and TensorRT engines itself)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file; all mean the same to the user
        if isinstance(e, pickle.UnpicklingError) and "global" in str(e).lower():   # a class or function
            # ("Unsupported global", "unsupported GLOBAL posix.system ... is blocked"): it would run code
            raise CheckpointError(f"checkpoint {path} was refused: it holds Python objects that would run code "
                                  f"when loaded; re-save it as a plain segpipe checkpoint") from None
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (or not a checkpoint): re-download "
                              f"or retrain it") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a segpipe checkpoint (expected format {FORMAT}): "
                              f"pass a checkpoint written by `segpipe train`")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"checkpoint {path} lacks {', '.join(missing)}: re-save it with `segpipe train`")
    if "weights_sha256" in ckpt and weights_digest(ckpt["state_dict"]) != ckpt["weights_sha256"]:
        raise CheckpointError(f"checkpoint {path} is corrupt: its weights do not match their checksum; "
                              f"re-download or retrain it")
    n = ckpt["model_config"].get("num_classes") if isinstance(ckpt["model_config"], dict) else None
    if isinstance(n, int) and not len(ckpt["class_names"]) == len(ckpt["palette"]) == n:
        # trained before names followed num_classes (they were always CARLA's 23): named as a new one would be
        names, palette = class_table(n)
        if list(ckpt["class_names"]) != list(CARLA_CLASSES):
            names = [*ckpt["class_names"][:n], *names[len(ckpt["class_names"]):]]
        ckpt["class_names"] = list(names)
        ckpt["palette"] = [*ckpt["palette"][:n], *palette[len(ckpt["palette"]):]]
    return ckpt


def model_from_checkpoint(ckpt: dict, path: str | Path | None = None) -> UNet:
    """Build the U-Net the checkpoint describes and load its weights (eval mode, CPU)."""
    try:
        model = UNet(config_from_dict(ckpt["model_config"]))
        model.load_state_dict(ckpt["state_dict"])
    except (RuntimeError, TypeError, KeyError) as e:
        first = str(e).strip().splitlines()[0][:160]
        raise CheckpointError(f"checkpoint {path or ''} does not match its U-Net config ({first}): "
                              f"is it from another architecture?") from None
    return model.eval()


def load_model(weights: str | Path | None = None) -> tuple[UNet, dict]:
    ckpt = load_checkpoint(weights)
    return model_from_checkpoint(ckpt, resolve_weights(weights)), ckpt
