"""Masks sink: each frame's labels as a lossless single-channel PNG, DIR/000000.png ..., at the input's
resolution, named by the frame's index in the source. Passes the frame on. A PNG that cannot be written
completely (disk full) is removed, so every PNG in the folder is whole."""
from __future__ import annotations

from pathlib import Path

import cv2

from pipeline.stage import Stage
from train.errors import MediaError


class MaskWriter(Stage):
    name = "masks"
    wants_labels = True

    def __init__(self, directory: str | Path, compression: int = 1):
        super().__init__()
        self.directory = Path(directory)
        self.params = [cv2.IMWRITE_PNG_COMPRESSION, int(compression)]

    def setup(self) -> None:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise MediaError(f"cannot create the masks folder {self.directory}: {e.strerror}") from None

    def process(self, frame):
        path = self.directory / f"{frame.index:06d}.png"
        try:
            ok = cv2.imwrite(str(path), frame.labels_full, self.params)
        except cv2.error:
            ok = False
        if not ok:
            path.unlink(missing_ok=True)      # never leave a half-written PNG
            raise MediaError(f"cannot write {path}: is the disk full or the folder read-only? (the masks "
                             f"before it are complete)")
        frame.labels_full = None
        return frame
