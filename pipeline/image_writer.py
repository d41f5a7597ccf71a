"""Image sink for a one-frame input (a photo, or ``--frames 1``): ``--out seg.png`` (or .jpg, .webp,
...) is the finished frame as that image. Written under a temporary name and renamed, so an image that
exists is whole."""
from __future__ import annotations

import os
from pathlib import Path

import cv2

from pipeline.stage import Stage
from train.data import IMAGE_EXTENSIONS
from train.errors import InvalidInputError, MediaError


class ImageWriter(Stage):
    name = "write"
    sound = "none: an image has no sound"
    kept = None                      # as Encode's: None means every frame done is in the file

    def __init__(self, path: str | Path, frames: int | None, source: str):
        super().__init__()
        self.path = Path(path)
        self.codec = self.path.suffix.lower().lstrip(".")
        if self.path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InvalidInputError(f"--out {self.path}: segpipe writes images as "
                                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}: use one of those, or a video "
                                    f"(.mp4)")
        if frames != 1:
            count = f"{frames} frames" if frames else "frames until it ends"
            raise InvalidInputError(f"--out {self.path} is one image, but {source} has {count}: name a video "
                                    f"(e.g. seg.mp4), pass --frames 1 for its first frame, or --masks DIR "
                                    f"for each frame's labels as PNG")

    def process(self, frame):
        if self.delivered:
            raise MediaError(f"{frame.index + 1} frames came, but --out {self.path} holds one image: name a "
                             f"video (e.g. seg.mp4)")
        part = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        try:
            ok = cv2.imwrite(str(part), cv2.cvtColor(frame.output, cv2.COLOR_RGB2BGR))
        except cv2.error:
            ok = False
        try:
            if not ok:
                raise OSError("the image could not be written")
            os.replace(part, self.path)
        except OSError as e:
            part.unlink(missing_ok=True)
            raise MediaError(f"cannot write {self.path}: {e.strerror or e} (is the disk full or the folder "
                             f"read-only?)") from None
        return frame
