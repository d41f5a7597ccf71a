"""The U-Net of Ronneberger et al. (2015), as encoder + decoder + head.

Variants are frozen dataclasses in ``MODEL_CONFIGS``; ``create_model(name, **overrides)``
builds one by name. With the classic depth of 4 the network has 23 conv layers:
8 in the contracting path, 2 in the bottleneck, 4 transposed + 8 plain in the
expanding path, and the final 1x1 conv.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn

from train.errors import InvalidInputError


@dataclass(frozen=True)
class UNetConfig:
    num_classes: int = 23
    in_channels: int = 3
    base_filters: int = 32
    depth: int = 4              # number of 2x2 max-pools
    dropout: float = 0.0        # in the two deepest contracting blocks, as in the seed
    batch_norm: bool = False
    padding: str = "same"       # "same": output size = input size; "valid": the paper's unpadded convs

    def __post_init__(self):
        # every field checked here, so a bad model_options value is one line, never a torch traceback
        for name, (test, valid) in OPTION_CHECKS.items():
            value = getattr(self, name)
            if not test(value):
                raise InvalidInputError(f"model option {name} is {value!r} but must be {valid}")


def is_int(lo: int):
    """A check for an int >= ``lo`` (not a bool), for config tables."""
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= lo


OPTION_CHECKS = {   # field: (test, what a valid value is)
    "num_classes": (lambda v: is_int(2)(v) and v <= 255, "an integer 2..255 (255 marks pixels to ignore), e.g. 23"),
    "in_channels": (is_int(1), "an integer >= 1, e.g. 3"),
    "base_filters": (is_int(1), "an integer >= 1, e.g. 32"),
    "depth": (is_int(1), "an integer >= 1, e.g. 4"),
    "dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1,
                "a number with 0 <= dropout < 1, e.g. 0.3"),
    "batch_norm": (lambda v: isinstance(v, bool), "true or false"),
    "padding": (lambda v: v in ("same", "valid"), "'same' or 'valid'"),
}


MODEL_CONFIGS: dict[str, UNetConfig] = {
    # The seed: 32 base filters, dropout 0.3 deep, same padding.
    "unet_seed": UNetConfig(base_filters=32, dropout=0.3),
    # The paper: 64 base filters, unpadded convs, cropped skips.
    "unet_paper": UNetConfig(base_filters=64, padding="valid"),
    # Shipped default: small and batch-normed so it trains on a CPU and runs >= 30 fps there.
    "unet_carla": UNetConfig(base_filters=16, batch_norm=True),
    "unet_tiny": UNetConfig(base_filters=8, batch_norm=True),
}


def create_model(name: str = "unet_carla", **overrides) -> "UNet":
    if name not in MODEL_CONFIGS:
        raise InvalidInputError(f"unknown model {name!r}: choose one of {', '.join(MODEL_CONFIGS)}")
    known = {f.name for f in fields(UNetConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise InvalidInputError(f"unknown model options {sorted(unknown)}: valid are {sorted(known)}")
    return UNet(replace(MODEL_CONFIGS[name], **overrides))


class ConvBlock(nn.Sequential):
    """Two 3x3 convs, each followed by (optional batch norm and) ReLU."""

    def __init__(self, cin: int, cout: int, padding: int, batch_norm: bool, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for c in (cin, cout):
            layers.append(nn.Conv2d(c, cout, 3, padding=padding, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers.append(nn.ReLU(inplace=True))
        if dropout:
            layers.append(nn.Dropout2d(dropout))
        super().__init__(*layers)


class Encoder(nn.Module):
    """Contracting path: conv blocks with channels doubling, 2x2 max-pool between them."""

    def __init__(self, cfg: UNetConfig):
        super().__init__()
        pad = 1 if cfg.padding == "same" else 0
        chans = [cfg.base_filters * 2**i for i in range(cfg.depth + 1)]
        self.channels = chans
        self.blocks = nn.ModuleList()
        cin = cfg.in_channels
        for i, c in enumerate(chans):
            deep = i >= cfg.depth - 1  # the seed drops out in its two deepest blocks
            self.blocks.append(ConvBlock(cin, c, pad, cfg.batch_norm, cfg.dropout if deep else 0.0))
            cin = c
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for i, block in enumerate(self.blocks):
            if i:
                x = self.pool(x)
            x = block(x)
            features.append(x)
        return features  # shallow to deep; the last one is the bottleneck


class DecoderBlock(nn.Module):
    """Transposed conv halving the channels, concatenation with the skip, two 3x3 convs."""

    def __init__(self, cin: int, cout: int, padding: int, batch_norm: bool):
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2)
        self.conv = ConvBlock(2 * cout, cout, padding, batch_norm)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))


def center_crop(x: torch.Tensor, size) -> torch.Tensor:
    """The paper's crop of a skip to the upsampled map (a no-op with same padding)."""
    h, w = x.shape[-2:]
    th, tw = int(size[0]), int(size[1])
    if (h, w) == (th, tw):
        return x
    top, left = (h - th) // 2, (w - tw) // 2
    return x[..., top:top + th, left:left + tw]


class Decoder(nn.Module):
    def __init__(self, cfg: UNetConfig, encoder_channels: list[int]):
        super().__init__()
        pad = 1 if cfg.padding == "same" else 0
        deep_to_shallow = encoder_channels[::-1]
        self.blocks = nn.ModuleList(
            DecoderBlock(cin, cout, pad, cfg.batch_norm)
            for cin, cout in zip(deep_to_shallow[:-1], deep_to_shallow[1:])
        )

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x, skips = features[-1], features[-2::-1]
        for block, skip in zip(self.blocks, skips):
            x = block(x, skip)
        return x


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg, self.encoder.channels)
        self.head = nn.Conv2d(cfg.base_filters, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input_size(self.config, x.shape[-2], x.shape[-1])
        return self.head(self.decoder(self.encoder(x)))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        return output_size(self.config, height, width)


def output_size(cfg: UNetConfig, height: int, width: int) -> tuple[int, int]:
    """Spatial size of the logits for an input of ``height`` x ``width``."""
    if cfg.padding == "same":
        check_input_size(cfg, height, width)
        return height, width
    check_input_size(cfg, height, width)
    return _valid_out(cfg.depth, height), _valid_out(cfg.depth, width)


def border_margin(cfg: UNetConfig) -> int:
    """Pixels an unpadded U-Net loses on each side of its input, the same for every input it takes (92 at
    depth 4: 572 -> 388); 0 with same padding."""
    if cfg.padding == "same":
        return 0
    n = next(n for n in itertools.count(1) if _valid_out(cfg.depth, n))
    return (n - output_size(cfg, n, n)[0]) // 2


def frame_size_for(cfg: UNetConfig, height: int, width: int) -> tuple[int, int]:
    """The frames a model labels, for an input of (height, width): that size with same padding; for a valid
    U-Net (whose border the engine mirrors) the nearest size that, mirrored, is an input it takes, so a
    frame resized to it shows objects at the scale the model was trained at."""
    return (height, width) if cfg.padding == "same" else (nearest_frame(cfg, height), nearest_frame(cfg, width))


def frame_fits(cfg: UNetConfig, n: int) -> bool:
    """A valid U-Net labels a frame side of ``n``: more than its margin, and an input once mirrored."""
    m = border_margin(cfg)
    return n > m and _valid_out(cfg.depth, n + 2 * m) is not None


def nearest_frame(cfg: UNetConfig, n: int) -> int:
    m = border_margin(cfg)
    return min((c for c in range(m + 1, max(n, m) + 2 ** (cfg.depth + 1)) if frame_fits(cfg, c)),
               key=lambda c: abs(c - n))


def _valid_out(depth: int, n: int) -> int | None:
    """Output length of the unpadded U-Net for input length n, or None if n does not fit."""
    for _ in range(depth):
        n -= 4
        if n <= 0 or n % 2:
            return None
        n //= 2
    n -= 4
    for _ in range(depth):
        n = 2 * n - 4
    return n if n > 0 else None


def check_input_size(cfg: UNetConfig, height: int, width: int, setting: str = "--size") -> None:
    """Raise a clear error, naming a size that works, when the depth cannot divide the input
    (``setting``: where the size came from, e.g. --size or a training config's input_size)."""
    h, w = int(height), int(width)

    def use(near):
        return f"use --size {near[0]}x{near[1]}" if setting == "--size" else f"use {setting}: [{near[0]}, {near[1]}]"

    if cfg.padding == "same":
        m = 2 ** cfg.depth
        if h % m or w % m or h < m or w < m:
            near = (max(m, round(h / m) * m), max(m, round(w / m) * m))
            raise InvalidInputError(
                f"input {h}x{w} is not divisible by {m} (depth {cfg.depth}): {use(near)}")
    else:
        if _valid_out(cfg.depth, h) is None or _valid_out(cfg.depth, w) is None:
            near = (_nearest_valid(cfg.depth, h), _nearest_valid(cfg.depth, w))
            raise InvalidInputError(
                f"input {h}x{w} does not fit an unpadded U-Net of depth {cfg.depth}: {use(near)}")


def _nearest_valid(depth: int, n: int) -> int:
    near = [c for c in range(max(1, n - 64), n + 65) if _valid_out(depth, c)]
    return min(near, key=lambda c: abs(c - n)) if near else next(c for c in itertools.count(n) if _valid_out(depth, c))


def config_to_dict(cfg: UNetConfig) -> dict:
    return asdict(cfg)


def config_from_dict(d: dict) -> UNetConfig:
    known = {f.name for f in fields(UNetConfig)}
    return UNetConfig(**{k: v for k, v in d.items() if k in known})
