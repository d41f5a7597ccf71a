"""CARLA frames: reading, the run-based train/val split, and augmentation.

Layout: ``DIR/CameraRGB/<stem>.<ext>`` and ``DIR/CameraMask/<stem>.<ext>``; the class id of
each pixel is in the mask's red channel (or the only channel of a single-channel mask).
Neighbouring frames are near-duplicates, so the split is by runs of frame numbers.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from train.errors import DatasetError, InputNotFoundError
from train.metrics import IGNORE

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SAME_SCENE = 5.0     # split_by_runs: runs whose boundary frames differ less than this are one run


@dataclass(frozen=True)
class FramePair:
    stem: str
    number: int
    image: Path
    mask: Path
    drive: str = ""       # the name before the number (drive3_000123: drive3_): frames of one drive share it


def find_pairs(root: str | Path) -> list[FramePair]:
    """Pair CameraRGB/ with CameraMask/ by file stem, in frame-number order."""
    root = Path(root)
    if not root.is_dir():
        problem = "is a file, not a folder" if root.exists() else "does not exist"
        raise InputNotFoundError(f"dataset folder {root} {problem}: pass --data with a folder "
                                 f"holding CameraRGB/ and CameraMask/")
    rgb_dir, mask_dir = root / "CameraRGB", root / "CameraMask"
    for d in (rgb_dir, mask_dir):
        if not d.is_dir():
            raise DatasetError(f"{root} has no {d.name}/ folder: a CARLA dataset holds CameraRGB/ and CameraMask/")
    images = _images_by_stem(rgb_dir)
    masks = _images_by_stem(mask_dir)
    if not images:
        raise DatasetError(f"{rgb_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    orphans = sorted(set(masks) - set(images))
    if orphans:
        raise DatasetError(f"mask {masks[orphans[0]].name} has no image in {rgb_dir} "
                           f"({len(orphans)} masks without images): add the images or remove the masks")
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DatasetError(f"image {images[missing[0]].name} has no mask in {mask_dir} "
                           f"({len(missing)} images without masks): add the masks or remove the images")
    # the split finds runs by frame number, so every name must carry one (000123, frame_000123)
    digits = {s: s[len(s.rstrip("0123456789")):] for s in images}
    unnumbered = sorted(s for s, d in digits.items() if not d)
    if unnumbered:
        raise DatasetError(f"image {images[unnumbered[0]].name} has no frame number at the end of its name "
                           f"({len(unnumbered)} such): names must end in frame numbers (e.g. 000123.png or "
                           f"frame_000123.png) so runs of consecutive frames can be found")
    drives = {s: s[:len(s) - len(d)] for s, d in digits.items()}
    stems = sorted(images, key=lambda s: (drives[s], int(digits[s]), s))
    return [FramePair(s, int(digits[s]), images[s], masks[s], drives[s]) for s in stems]


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        if p.stem in found:
            raise DatasetError(f"{found[p.stem].name} and {p.name} in {folder} are one frame twice: keep one of them")
        found[p.stem] = p
    return found


def decode_image(path: str | Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """The image in ``path`` as OpenCV decodes it with ``flags``, or None if it cannot be read. From the
    bytes, not cv2.imread: that returns a JPEG cut short (a failed copy) half grey, as if it were whole."""
    try:
        data = np.fromfile(path, np.uint8)
        return cv2.imdecode(data, flags) if data.size else None
    except (OSError, cv2.error):
        return None


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 (H, W, 3)."""
    img = decode_image(path, cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read image {path}: is it a valid image file (not empty or cut short)?")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: Path, num_classes: int = 23) -> np.ndarray:
    """Class ids uint8 (H, W) from the red channel, or from a single-channel mask."""
    m = decode_image(path, cv2.IMREAD_UNCHANGED)
    if m is None:
        raise DatasetError(f"cannot read mask {path}: is it a valid image file (not empty or cut short)?")
    return mask_ids(m, path, num_classes)


def mask_ids(m: np.ndarray, path, num_classes: int = 23) -> np.ndarray:
    """Class ids from a mask as OpenCV reads it (BGR(A) order for colour masks)."""
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    colour = m.ndim == 3
    if colour:
        if m.shape[2] not in (3, 4):
            raise DatasetError(f"mask {path} has {m.shape[2]} channels: expected 1 (class ids) or 3/4 (ids in red)")
        m = m[..., 2]  # OpenCV reads BGR(A): red is index 2
    if m.dtype != np.uint8:
        raise DatasetError(f"mask {path} is {m.dtype}: expected 8-bit class ids")
    top = int(m[m != IGNORE].max(initial=0))          # 255: pixels to ignore (Cityscapes' void)
    if top >= num_classes:
        more = f"give the model more classes (model_options: {{num_classes: {top + 1}}})"
        hint = f"is the class id in the red channel (a colour-coded mask needs turning into ids)? or {more}" \
            if colour else more
        where = " (read from the red channel)" if colour else ""
        raise DatasetError(f"mask {path} holds class id {top}{where}, beyond the {num_classes} classes "
                           f"(0-{num_classes - 1}): {hint}")
    return np.ascontiguousarray(m)


def split_by_runs(pairs: list[FramePair], val_every: int = 5, max_gap: int = 10,
                  same_scene: float = SAME_SCENE) -> tuple[list, list]:
    """Deterministic split: frames of one drive (the name before the number) whose numbers are within
    ``max_gap`` form one run, and every ``val_every``-th run goes to validation. Never splits inside a run.

    Two runs also join when the last frame of one and the first of the next look alike (mean absolute
    grey-level difference <= ``same_scene`` at 160x120; 0 turns this off): a car stopped across a gap in
    the frame numbers films the same scene, which must not be in training and validation both."""
    runs: list[list[FramePair]] = []
    for p in pairs:
        last = runs[-1][-1] if runs else None
        if last is not None and last.drive == p.drive and (p.number - last.number <= max_gap or
                                                           same_scene > 0 and scene_difference(last, p) <= same_scene):
            runs[-1].append(p)
        else:
            runs.append([p])
    train, val = [], []
    for i, run in enumerate(runs):
        (val if i % val_every == val_every // 2 else train).extend(run)
    if not val or not train:
        raise DatasetError(f"{len(pairs)} frames in {len(runs)} runs are too few to split into train and validation "
                           f"(a run: frames of one name prefix numbered at most {max_gap} apart; one run in "
                           f"{val_every} is validation): add frames or drives, or lower val_every")
    return train, val


def scene_difference(a: FramePair, b: FramePair) -> float:
    """Mean absolute difference of two frames' grey levels at 160x120 (0-255; neighbouring frames of one
    drive: 3.4 median on the CARLA set, frames of different scenes: 10 and up)."""
    small = []
    for pair in (a, b):
        grey = decode_image(pair.image, cv2.IMREAD_GRAYSCALE)
        if grey is None:
            raise DatasetError(f"cannot read image {pair.image}: is it a valid image file (not empty or cut short)?")
        small.append(cv2.resize(grey, (160, 120), interpolation=cv2.INTER_AREA).astype(np.float32))
    return float(np.abs(small[0] - small[1]).mean())


def read_pair(pair: FramePair, num_classes: int = 23) -> tuple[np.ndarray, np.ndarray]:
    """A frame and its mask, which must be the same size: RGB uint8 (H, W, 3), class ids uint8 (H, W)."""
    img, mask = read_image(pair.image), read_mask(pair.mask, num_classes)
    if img.shape[:2] != mask.shape:
        raise DatasetError(f"image {pair.image.name} is {img.shape[1]}x{img.shape[0]} but its mask is "
                           f"{mask.shape[1]}x{mask.shape[0]}: they must match")
    return img, mask


class FrameSet:
    """Frames held in memory as uint8 tensors: images (N, 3, H, W) RGB and masks (N, H, W).

    Decoding 640x480 JPEGs is the slowest step on a small CPU, so it is done once; images are
    kept at ``scale`` times the model size to leave room for scale/crop augmentation.
    """

    def __init__(self, pairs: list[FramePair], size: tuple[int, int], scale: float = 1.0, num_classes: int = 23):
        h, w = round(size[0] * scale), round(size[1] * scale)
        self.pairs = pairs
        self.size = size
        self.images = torch.empty(len(pairs), 3, h, w, dtype=torch.uint8)
        self.masks = torch.empty(len(pairs), h, w, dtype=torch.uint8)
        for i, p in enumerate(pairs):
            img, mask = read_pair(p, num_classes)
            self.images[i] = torch.from_numpy(cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)).permute(2, 0, 1)
            # _EXACT: the source pixel under each output pixel's centre (INTER_NEAREST takes the one at its
            # top-left corner, shifting labels against the area-resized image by up to a pixel)
            self.masks[i] = torch.from_numpy(cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST_EXACT))

    def __len__(self) -> int:
        return len(self.pairs)

    def batches(self, batch_size: int, augment: bool, generator: torch.Generator | None = None,
                indices: torch.Tensor | None = None, crop: tuple[int, int] | None = None,
                zoom: tuple[float, float] = (1.0, 1.6)):
        """Yield (uint8 images, int64 masks): augmented ``crop``-sized pieces at the model's scale, or whole
        frames at the model size."""
        order = indices if indices is not None else torch.arange(len(self))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            images, masks = self.images[idx], self.masks[idx]
            if augment:
                images, masks = augment_batch(images, masks, self.size, generator, crop=crop, zoom=zoom)
            elif images.shape[-2:] != self.size:
                images = F.interpolate(images.float(), size=self.size, mode="bilinear", antialias=True,
                                       align_corners=False).round().clamp(0, 255).byte()
                masks = F.interpolate(masks[:, None].float(), size=self.size, mode="nearest-exact")[:, 0].byte()
            yield images, masks.long()


def augment_batch(images: torch.Tensor, masks: torch.Tensor, size: tuple[int, int],
                  generator: torch.Generator | None = None, crop: tuple[int, int] | None = None,
                  zoom: tuple[float, float] = (1.0, 1.6)):
    """Driving-friendly augmentation: horizontal flip, scale jitter with a random crop, photometric jitter.

    ``images`` are frames cached larger than the model ``size``; the output is ``crop`` pixels (default: the
    whole ``size``) at the model's scale times a zoom drawn from ``zoom``. A crop smaller than the model size
    trains the fully convolutional net faster at the same scale. No vertical flips or rotations: the sky
    stays up and the road stays down.
    """
    n, _, H, W = images.shape
    crop = tuple(crop or size)
    per_pixel = min(H / size[0], W / size[1])  # cached pixels per model pixel
    out_img = torch.empty(n, 3, *crop)
    out_mask = torch.empty(n, *crop, dtype=torch.uint8)
    r = torch.rand(n, 8, generator=generator)
    for i in range(n):
        z = zoom[0] + (zoom[1] - zoom[0]) * r[i, 0].item()
        z = max(z, crop[0] * per_pixel / H, crop[1] * per_pixel / W)   # at most the whole frame, both sides alike
        ch, cw = min(H, max(1, round(crop[0] * per_pixel / z))), min(W, max(1, round(crop[1] * per_pixel / z)))
        top = int(r[i, 1].item() * (H - ch))
        left = int(r[i, 2].item() * (W - cw))
        img = images[i:i + 1, :, top:top + ch, left:left + cw].float()
        mask = masks[i:i + 1, None, top:top + ch, left:left + cw].float()
        img = F.interpolate(img, size=crop, mode="bilinear", antialias=True, align_corners=False)
        mask = F.interpolate(mask, size=crop, mode="nearest-exact")     # centred, as the image's bilinear
        if r[i, 3] < 0.5:
            img, mask = img.flip(-1), mask.flip(-1)
        out_img[i], out_mask[i] = img[0], mask[0, 0].byte()
    # photometric jitter: brightness, contrast, saturation (per frame)
    brightness = 0.75 + 0.5 * r[:, 4].view(n, 1, 1, 1)
    contrast = 0.75 + 0.5 * r[:, 5].view(n, 1, 1, 1)
    saturation = 0.7 + 0.6 * r[:, 6].view(n, 1, 1, 1)
    x = out_img * brightness
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray) * saturation + gray
    return x.round().clamp(0, 255).byte(), out_mask


def class_frequencies(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each class's share of the labelled pixels (``IGNORE`` pixels left out)."""
    counts = torch.bincount(masks.flatten().long(), minlength=num_classes)[:num_classes].double()
    return counts / counts.sum().clamp(min=1)
