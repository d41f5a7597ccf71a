"""CARLA 0.9.x semantic tags and the Cityscapes palette CARLA draws them with."""

import colorsys

import numpy as np

CARLA_CLASSES = (
    "unlabeled", "building", "fence", "other", "pedestrian", "pole", "road line", "road",
    "sidewalk", "vegetation", "vehicle", "wall", "traffic sign", "sky", "ground", "bridge",
    "rail track", "guard rail", "traffic light", "static", "dynamic", "water", "terrain",
)

# RGB, index = class id (CARLA's own colour table for these tags).
CARLA_PALETTE = (
    (0, 0, 0), (70, 70, 70), (100, 40, 40), (55, 90, 80), (220, 20, 60), (153, 153, 153),
    (157, 234, 50), (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142),
    (102, 102, 156), (220, 220, 0), (70, 130, 180), (81, 0, 81), (150, 100, 100),
    (230, 150, 140), (180, 165, 180), (250, 170, 30), (110, 190, 160), (170, 120, 50),
    (45, 60, 150), (145, 170, 100),
)

assert len(CARLA_CLASSES) == len(CARLA_PALETTE) == 23


def class_table(num_classes: int, names=None, palette=None) -> tuple[tuple[str, ...], tuple[tuple[int, int, int], ...]]:
    """Names and RGB colours for ``num_classes`` classes: those given, else CARLA's for a 23-class model
    and ``class N`` otherwise; CARLA's colours for the first 23 ids, then distinct hues."""
    if names is None:
        names = CARLA_CLASSES if num_classes == len(CARLA_CLASSES) else [f"class {i}" for i in range(num_classes)]
    if palette is None:
        palette = [*CARLA_PALETTE[:num_classes], *(_hue(i) for i in range(len(CARLA_PALETTE), num_classes))]
    return tuple(str(n) for n in names), tuple(tuple(int(v) for v in c) for c in palette)


def palette_lut(palette) -> np.ndarray:
    """A (256, 3) uint8 colour table: every id a uint8 label can hold has a colour (past the palette,
    and 255, ignored: black)."""
    lut = np.zeros((256, 3), np.uint8)
    colours = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lut[:len(colours)] = colours
    return lut


def _hue(i: int) -> tuple[int, int, int]:
    """A bright colour of its own for class ``i`` (golden-angle steps around the hue circle)."""
    r, g, b = colorsys.hsv_to_rgb((i * 0.618034) % 1.0, 0.65, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)
