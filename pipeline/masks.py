"""Masks sink: each frame's labels as a lossless single-channel PNG at the input's resolution. A video's
frames are named by their index in it (DIR/000000.png ...); images keep their file's name (frames/0042.jpg
gives DIR/0042.png, to compare with a data set's masks by name), unless two share one. A run never starts
over PNGs of those names already there (``masks_replaced``: they may be the ground truth). Passes the frame
on. A PNG that cannot be written completely (disk full) is removed, so every PNG in the folder is whole."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import cv2

from pipeline.stage import Stage
from train.errors import MediaError

log = logging.getLogger("segpipe.pipeline")


class MaskWriter(Stage):
    name = "masks"
    wants_labels = True

    def __init__(self, directory: str | Path, compression: int = 1, names: list[str] | None = None):
        super().__init__()
        self.directory = Path(directory)
        self.names = names            # per source index; None: numbered
        self.written = 0
        self.params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]

    def setup(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MediaError(f"cannot create the masks folder {self.directory}: {e.strerror}") from None

    def process(self, frame):
        name = self.names[frame.index] if self.names else f"{frame.index:06d}"
        path = self.directory / f"{name}.png"
        try:
            ok = cv2.imwrite(str(path), frame.labels_full, self.params)
        except cv2.error:
            ok = False
        if not ok:
            path.unlink(missing_ok=True)      # never leave a half-written PNG
            raise MediaError(f"cannot write {path}: is the disk full or the folder read-only? (the masks "
                             f"before it are complete)")
        self.written += 1
        frame.labels_full = None
        return frame


def image_stems(files: list[str] | None) -> list[str] | None:
    """The PNG names for an image source's ``files``: their stems, or None (numbered) where two share one
    (a recursive glob over folders of 0001.jpg ...; case aside, for case-blind file systems)."""
    if not files:
        return None
    stems = [Path(f).stem for f in files]
    return stems if len({stem.casefold() for stem in stems}) == len(stems) else None


def mask_names(files: list[str] | None) -> list[str] | None:
    """``image_stems``, saying so when the masks are numbered instead."""
    names = image_stems(files)
    if files and names is None:
        folded = Counter(Path(f).stem.casefold() for f in files)
        shared, n = folded.most_common(1)[0]
        log.warning("--masks: %d images share the name %s.*, so the masks are numbered in input order instead "
                    "(000000.png is %s)", n, shared, files[0])
    return names


def masks_replaced(directory: str | Path, files: list[str] | None) -> list[str]:
    """The PNGs in ``directory`` that masks named after ``files`` would replace (a data set's own masks,
    say: CameraMask/0042.png beside CameraRGB/0042.jpg)."""
    names, directory = image_stems(files), Path(directory)
    if not names or not directory.is_dir():
        return []
    existing = {p.name.casefold() for p in directory.glob("*.[pP][nN][gG]")}
    return [f"{name}.png" for name in names if f"{name}.png".casefold() in existing]
