"""Pipeline settings: one section per stage (and one for `segpipe live`), read from configs/pipeline.yaml,
overridden by CLI flags. Values are checked for type and range, so a bad value is one clear line.

``load_settings(path, overrides)`` returns a frozen ``Settings``; ``save_settings`` writes the settings
actually used (plus what the run resolved: backend, policy, sizes) beside the output.
The built-in defaults below are identical to configs/pipeline.yaml, so a missing file changes nothing.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import yaml

from engine.sizes import format_size, parse_size
from pipeline.queues import POLICIES
from train.errors import InputNotFoundError, InvalidInputError
from train.paths import read_yaml

CONFIG_FILE = Path(__file__).resolve().parents[1] / "configs" / "pipeline.yaml"
VIEWS = ("overlay", "mask", "side-by-side")
THREAD_TYPES = ("AUTO", "FRAME", "SLICE", "NONE")


@dataclass(frozen=True)
class DecodeSettings:
    thread_type: str = "AUTO"        # FFmpeg decoder threading: AUTO (frame + slice), FRAME, SLICE, NONE
    threads: int = 0                 # decoder threads (0: FFmpeg picks)
    fps: float = 20.0                # frame rate for image folders/globs and streams that do not say
    timeout_s: float = 10.0          # URLs and cameras: give up opening/reading after this long
    camera_format: str = "v4l2"      # FFmpeg input format for cameras (v4l2 on Linux)
    options: dict = field(default_factory=dict)  # FFmpeg demuxer options, e.g. {rtsp_transport: tcp}
    max_frames: int | None = None    # stop after this many frames (None: the whole source)
    stall_timeout_s: float = 30.0    # no frame from the source for this long ends the run (exit 3; 0: wait forever)


@dataclass(frozen=True)
class PreprocessSettings:
    interpolation: str = "area"      # resize filter: area (cv2.INTER_AREA / torch area) or bilinear
    cv2_threads: int = 1             # OpenCV's thread pool (process-wide; also used by colourise)


@dataclass(frozen=True)
class InferSettings:
    weights: str | None = None       # checkpoint (None: the shipped model)
    backend: str = "auto"            # engine.load backend name, or auto
    precision: str = "fp16"          # reduced precision where fast and checked (BF16 on CPUs that have it), or fp32
    device: str | None = None        # None: the backend's choice
    size: tuple[int, int] | None = None  # model input (H, W); None: the checkpoint's
    batch: int = 4                   # at most this many frames per inference call
    max_wait_ms: float = 5.0         # wait at most this long for a batch to fill (live sources never stall)
    torch_threads: int = 0           # torch (and onnxruntime) intra-op threads, process-wide; 0: torch's
                                     # default (the physical cores)


@dataclass(frozen=True)
class ColouriseSettings:
    view: str = "overlay"            # overlay | mask | side-by-side
    alpha: float = 0.5               # overlay opacity of the class colours
    legend: bool = False             # draw the classes present in each frame


@dataclass(frozen=True)
class EncodeSettings:
    codec: str = "auto"              # libx264 (H.264), or libvpx-vp9 for .webm
    pix_fmt: str = "yuv420p"         # odd sizes are padded to even for chroma-subsampled formats
    preset: str | None = "ultrafast" # x264/x265 speed preset (ultrafast: ~2 CPU-ms/frame less than
                                     # superfast at 640x480, ~10% larger files)
    tune: str | None = "zerolatency" # no lookahead or B-frames: a packet per frame, low latency
    crf: int | None = 23
    threads: int = 0                 # encoder threads (0: FFmpeg picks from the core count)
    options: dict = field(default_factory=dict)  # extra codec options, e.g. {profile: high}
    fragment_s: float = 1.0          # H.264 MP4/MOV: on disk in fragments this long, so a killed run keeps
                                     # all but the last; a finished file is an ordinary MP4. 0: one piece
    audio: bool = True               # copy a file's sound into the output as it is (no re-encoding)
    png_compression: int = 1         # --masks PNGs: zlib level 0-9 (lossless at every level)


@dataclass(frozen=True)
class QueueSettings:
    capacity: int = 4                # frames each queue holds (the infer queue holds at least a batch)
    policy: str = "auto"             # the queue after the source: auto = block for files, drop-oldest
                                     # for live sources; or block | drop-oldest | drop-newest | fault
    downstream_policy: str = "block" # the queues after that: block = backpressure, so a live source
                                     # drops at the door instead of after costly inference


@dataclass(frozen=True)
class LiveSettings:
    """What `segpipe live` adds to the pipeline's settings (its flags override these; see pipeline/live.py)."""
    realtime: bool = False             # pace a file at its native rate, as if a camera filmed it
    loop: bool = False                 # start a file again at its end
    batch: int = 1                     # frames per inference call: 1 keeps latency lowest
    max_wait_ms: float = 1.0           # wait this long at most for a batch to fill
    queue_capacity: int = 1            # frames each queue holds
    reconnect_attempts: int = 10       # a dropped camera/stream is reopened this many times at most
    reconnect_backoff_s: float = 0.5   # before the first attempt; doubles each attempt ...
    reconnect_backoff_max_s: float = 8.0   # ... up to this
    jpeg_quality: int = 80             # browser view
    legend: bool = True                # draw the classes present
    hud: bool = True                   # fps, latency and drops in the window

    def __post_init__(self):
        if self.batch < 1:
            raise InvalidInputError(f"--batch {self.batch} must be >= 1 (1 keeps latency lowest)")
        if self.queue_capacity < 1:
            raise InvalidInputError(f"queue capacity (live.queue_capacity) {self.queue_capacity} must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise InvalidInputError(f"--jpeg-quality {self.jpeg_quality} must be 1-100 (80 is the default)")


@dataclass(frozen=True)
class Settings:
    decode: DecodeSettings = field(default_factory=DecodeSettings)
    preprocess: PreprocessSettings = field(default_factory=PreprocessSettings)
    infer: InferSettings = field(default_factory=InferSettings)
    colourise: ColouriseSettings = field(default_factory=ColouriseSettings)
    encode: EncodeSettings = field(default_factory=EncodeSettings)
    queues: QueueSettings = field(default_factory=QueueSettings)
    live: LiveSettings = field(default_factory=LiveSettings)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["infer"]["size"] is not None:
            d["infer"]["size"] = format_size(d["infer"]["size"])
        return d

    def override(self, **sections: dict) -> "Settings":
        """A copy with ``{section: {key: value}}`` applied; None values are ignored (unset flags)."""
        return _apply(self, {s: {k: v for k, v in kv.items() if v is not None} for s, kv in sections.items()},
                      origin="override")


def _apply(settings: Settings, data: dict, origin: str) -> Settings:
    if not isinstance(data, dict):
        raise InvalidInputError(f"{origin}: expected sections {', '.join(f.name for f in fields(Settings))}")
    sections = {f.name: f for f in fields(Settings)}
    updates = {}
    for name, values in data.items():
        if name not in sections:
            raise InvalidInputError(f"{origin}: unknown section {name!r}: valid are {', '.join(sections)}")
        current = getattr(settings, name)
        if values is None:
            continue
        if not isinstance(values, dict):
            raise InvalidInputError(f"{origin}: section {name!r} must be a mapping of settings")
        known = {f.name for f in fields(current)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(f"{origin}: unknown {name} settings {unknown}: valid are {sorted(known)}")
        if "size" in values:
            values = {**values, "size": parse_size(values["size"])}
        types = {f.name: f.type for f in fields(current)}
        values = {k: _typed(f"{name}.{k}", v, types[k], origin) for k, v in values.items()}
        with _named(origin):
            updates[name] = replace(current, **values)
    with _named(origin):
        return validate(replace(settings, **updates))


@contextmanager
def _named(origin: str):
    """A bad value read from a config file names that file (flags name themselves)."""
    try:
        yield
    except InvalidInputError as e:
        raise (InvalidInputError(f"{origin}: {e}") if origin != "override" else e) from None


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}


def _typed(key: str, value, annotation: str, origin: str):
    """``value`` as the setting's type (an int where a float is wanted is fine), or a clear error."""
    names = [t.strip() for t in str(annotation).split("|")]
    if value is None:
        if "None" in names:
            return None
        raise InvalidInputError(f"{origin}: {key} cannot be empty (null)")
    for t in names:
        want = _TYPES.get(t)
        if want is None:
            if t.startswith("tuple"):            # a size, parsed already
                return value
            continue
        if want is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):          # YAML's .nan / .inf pass as floats, and fail far away
                raise InvalidInputError(f"{origin}: {key} is {value!r} but must be a finite number")
            return float(value)
        if isinstance(value, want) and not (want is int and isinstance(value, bool)):
            return value
    wanted = " or ".join(t for t in names if t != "None")
    raise InvalidInputError(f"{origin}: {key} is {value!r} ({type(value).__name__}) but must be {wanted}"
                            f"{' or null' if 'None' in names else ''}")


def validate(s: Settings) -> Settings:
    """Say early, and how to fix it, when a setting cannot work."""
    if s.colourise.view not in VIEWS:
        raise InvalidInputError(f"view (colourise.view) {s.colourise.view!r} is unknown: use one of "
                                f"{', '.join(VIEWS)}")
    if not 0.0 <= s.colourise.alpha <= 1.0:
        raise InvalidInputError(f"alpha (colourise.alpha) {s.colourise.alpha} is outside 0..1: use e.g. "
                                f"--alpha 0.5")
    if s.infer.batch < 1:
        raise InvalidInputError(f"batch (infer.batch) {s.infer.batch} must be >= 1: use e.g. --batch 4")
    if s.infer.max_wait_ms < 0:
        raise InvalidInputError("infer.max_wait_ms must be >= 0")
    if s.queues.capacity < 1:
        raise InvalidInputError(f"queues.capacity {s.queues.capacity} must be >= 1: use e.g. 8")
    for policy in (s.queues.policy, s.queues.downstream_policy):
        if policy not in ("auto", *POLICIES):
            raise InvalidInputError(f"queue policy {policy!r} is unknown: use auto, {', '.join(POLICIES)}")
    if s.preprocess.interpolation not in ("area", "bilinear"):
        raise InvalidInputError(f"preprocess.interpolation {s.preprocess.interpolation!r} is unknown: use area "
                                f"or bilinear")
    if s.decode.max_frames is not None and s.decode.max_frames < 1:
        raise InvalidInputError(f"--frames (decode.max_frames) {s.decode.max_frames} must be >= 1")
    if s.decode.fps <= 0:
        raise InvalidInputError(f"decode.fps {s.decode.fps} must be > 0")
    if str(s.decode.thread_type).upper() not in THREAD_TYPES:
        raise InvalidInputError(f"decode.thread_type {s.decode.thread_type!r} is unknown: use one of "
                                f"{', '.join(THREAD_TYPES)}")
    if s.decode.stall_timeout_s is None or s.decode.stall_timeout_s < 0:
        raise InvalidInputError(f"decode.stall_timeout_s {s.decode.stall_timeout_s} must be >= 0 seconds "
                                f"(0: wait for the source forever)")
    if s.encode.fragment_s is None or s.encode.fragment_s < 0:
        raise InvalidInputError(f"encode.fragment_s {s.encode.fragment_s} must be >= 0 seconds (0: an MP4 "
                                f"written in one piece, unplayable if the run is killed)")
    if not 0 <= s.encode.png_compression <= 9:
        raise InvalidInputError("encode.png_compression must be 0..9")
    for key, value in (("decode.threads", s.decode.threads), ("preprocess.cv2_threads", s.preprocess.cv2_threads),
                       ("infer.torch_threads", s.infer.torch_threads), ("encode.threads", s.encode.threads)):
        if value < 0:
            raise InvalidInputError(f"{key} {value} is a thread count: it must be >= 0")
    return replace(s, decode=replace(s.decode, thread_type=str(s.decode.thread_type).upper()))


def load_settings(path: str | Path | None = None, **overrides: dict) -> Settings:
    """Built-in defaults, then the YAML file (configs/pipeline.yaml if ``path`` is None and it exists),
    then ``overrides`` ({section: {key: value}}, None values ignored)."""
    settings = Settings()
    if path is not None and not Path(path).exists():
        raise InputNotFoundError(f"config {path} does not exist: pass an existing YAML file or drop --config")
    file = Path(path) if path is not None else CONFIG_FILE
    if file.is_dir():
        raise InvalidInputError(f"config {file} is a folder: pass a YAML file, e.g. {file}/pipeline.yaml")
    if file.exists():
        settings = _apply(settings, read_yaml(file), origin=str(file))
    return settings.override(**overrides) if overrides else settings


def save_settings(settings: Settings, path: str | Path, **resolved) -> Path:
    """Write the settings used (and ``resolved``: what the run chose, e.g. backend, policy) as YAML."""
    path = Path(path)
    data = {"resolved": resolved, **settings.to_dict()} if resolved else settings.to_dict()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
