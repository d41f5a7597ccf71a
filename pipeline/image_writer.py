"""Image sink for a one-frame input (a photo, or ``--frames 1``): ``--out seg.png`` (or .jpg, .webp,
...) is the finished frame as that image. An image from an earlier run is removed at the start, and the
new one is written under a temporary name and renamed, so an image that exists is this run's, whole."""
from __future__ import annotations

import os
from pathlib import Path

import cv2

from pipeline.stage import Stage
from train.data import IMAGE_EXTENSIONS
from train.errors import InvalidInputError, MediaError, plural


class ImageWriter(Stage):
    name = "image"
    sound = "none: an image has no sound"     # as Encode's, for the statistics
    kept = None                               # as Encode's: None means every frame done is in the file

    def __init__(self, path: str | Path, frames: int | None, source: str, png_compression: int = 1):
        super().__init__()
        self.path = Path(path)
        self.codec = self.path.suffix.lower().lstrip(".")
        self.params = [cv2.IMWRITE_PNG_COMPRESSION, int(png_compression)] if self.codec == "png" else []
        if self.codec == "gif":
            raise InvalidInputError(f"--out {self.path}: segpipe does not write GIFs (256 colours): write a video "
                                    f"(seg.mp4) and convert it, e.g. ffmpeg -i seg.mp4 -vf \"split[a][b];[a]"
                                    f"palettegen[p];[b][p]paletteuse\" seg.gif, or --out seg.png for one frame")
        if self.path.suffix.lower() not in IMAGE_EXTENSIONS:
            raise InvalidInputError(f"--out {self.path}: segpipe writes images as "
                                    f"{', '.join(sorted(IMAGE_EXTENSIONS))}: use one of those, or a video "
                                    f"(.mp4)")
        if not cv2.haveImageWriter(str(self.path)):
            raise InvalidInputError(f"--out {self.path}: this OpenCV ({cv2.__version__}) cannot write "
                                    f"{self.path.suffix} images: use .png or .jpg")
        if frames != 1:
            count = plural(frames, "frame") if frames else "no known number of frames"
            raise InvalidInputError(f"--out {self.path} is one image, but {source} has {count}: name a video "
                                    f"(e.g. seg.mp4), pass --frames 1 for its first frame, or --masks DIR for "
                                    f"each frame's labels as PNG")
        self.written = False

    def setup(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as e:
            raise MediaError(f"cannot replace {self.path}: {e.strerror}") from None

    def process(self, frame):
        if self.written:
            raise MediaError(f"more than one frame came, but --out {self.path} holds one image: name a video "
                             f"(e.g. seg.mp4)")
        part = self.path.with_name(f".{self.path.stem}.part{self.path.suffix}")
        try:
            if not cv2.imwrite(str(part), cv2.cvtColor(frame.output, cv2.COLOR_RGB2BGR), self.params):
                raise OSError("OpenCV could not write it")
            os.replace(part, self.path)
        except (OSError, cv2.error) as e:
            part.unlink(missing_ok=True)
            raise MediaError(f"cannot write {self.path}: {getattr(e, 'strerror', None) or e} (is the disk full "
                             f"or the folder read-only?)") from None
        self.written = True
        return frame
