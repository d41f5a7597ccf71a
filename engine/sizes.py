"""Model input sizes as users write them (``144x192``) and as the code holds them (``(H, W)``)."""
from __future__ import annotations

from train.errors import InvalidInputError

MAX_SIDE = 8192


def parse_size(size) -> tuple[int, int] | None:
    """``"144x192"``, ``(144, 192)`` or None -> (H, W)."""
    if size is None:
        return None
    try:
        h, w = (int(v) for v in (size.lower().split("x") if isinstance(size, str) else size))
    except (TypeError, ValueError):
        raise InvalidInputError(f"size {size!r} is not HxW: write it like 144x192") from None
    if h < 1 or w < 1:
        raise InvalidInputError(f"size {size!r} must be positive, like 144x192")
    if max(h, w) > MAX_SIDE:        # beyond any camera; the engine's own buffers would not fit in memory
        raise InvalidInputError(f"size {size!r} is larger than {MAX_SIDE} a side: use the frames' size or "
                                f"less, like 480x640")
    return h, w


def format_size(size) -> str:
    return f"{size[0]}x{size[1]}"
