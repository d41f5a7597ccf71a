"""Pack what a GPU session needs into the 64 MiB that travels to a lent GPU machine, and unpack it there.

The device machine sees only the repo, so ``../shared`` must travel in a carried, git-ignored folder. The
CARLA frames as JPEGs (79 MB) and PyAV's wheel (36 MB) do not fit together, but the frames are also the
video ``carla_drive.mp4`` (9.5 MB): carry the video and the masks, and rebuild the frames there.

    python benchmarks/gpu_pack.py pack            # here: .gpu/ (video + masks) and .whl/ (PyAV), ~52 MB
    python3 benchmarks/gpu_pack.py unpack OUTDIR  # there: OUTDIR/carla/{CameraRGB,CameraMask}, OUTDIR/drive_720p.mp4

Rebuilt frames are the H.264 decode of the originals (not the JPEGs): fine for training and speed runs;
score the resulting checkpoint against ``../shared/carla`` back here with ``segpipe eval``.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PACK, WHEELS = ROOT / ".gpu", ROOT / ".whl"
PYAV = "av==18.1.0"


def pack() -> None:
    from train.data import find_pairs, read_mask

    PACK.mkdir(exist_ok=True)
    exclude = ROOT / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    lines = exclude.read_text().splitlines() if exclude.exists() else []
    exclude.write_text("\n".join(lines + [p for p in ("/.gpu/", "/.whl/") if p not in lines]) + "\n")
    pairs = find_pairs(SHARED / "carla")
    masks = np.stack([read_mask(p.mask) for p in pairs])
    np.savez_compressed(PACK / "masks.npz", stems=np.array([p.stem for p in pairs]), masks=masks)
    video = SHARED / "videos" / "carla_drive.mp4"
    (PACK / video.name).write_bytes(video.read_bytes())
    if not list(WHEELS.glob("av-*.whl")):
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp",
                        "--platform", "manylinux_2_28_x86_64", "-d", str(WHEELS), PYAV], check=True)
    size = sum(f.stat().st_size for d in (PACK, WHEELS) for f in d.iterdir())
    print(f"packed {len(pairs)} masks, {video.name}, {PYAV}: {size / 2**20:.1f} MiB "
          f"(limit 64 MiB with the repo); carry [\".gpu\", \".whl\"]")


def unpack(out: Path) -> None:
    import av
    import cv2

    data = np.load(PACK / "masks.npz")
    stems, masks = data["stems"], data["masks"]
    rgb, lab = out / "carla" / "CameraRGB", out / "carla" / "CameraMask"
    rgb.mkdir(parents=True, exist_ok=True)
    lab.mkdir(parents=True, exist_ok=True)
    with av.open(str(PACK / "carla_drive.mp4")) as src, av.open(str(out / "drive_720p.mp4"), "w") as dst:
        stream = src.streams.video[0]
        stream.thread_type = "AUTO"
        enc = dst.add_stream("libx264", rate=stream.average_rate)
        enc.width, enc.height, enc.pix_fmt = 1280, 720, "yuv420p"
        enc.options = {"crf": "20", "preset": "veryfast"}
        n = 0
        for n, frame in enumerate(src.decode(stream), 1):
            image = frame.to_ndarray(format="bgr24")
            cv2.imwrite(str(rgb / f"{stems[n - 1]}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(lab / f"{stems[n - 1]}.png"), masks[n - 1])
            big = av.VideoFrame.from_ndarray(cv2.resize(image, (1280, 720), interpolation=cv2.INTER_LINEAR),
                                             format="bgr24")
            for packet in enc.encode(big):
                dst.mux(packet)
        for packet in enc.encode():
            dst.mux(packet)
    if n != len(stems):
        raise SystemExit(f"unpack: the video has {n} frames but there are {len(stems)} masks")
    print(f"unpacked {n} frames to {out / 'carla'} and a 1280x720 copy of the drive to {out / 'drive_720p.mp4'}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["pack", "unpack"])
    p.add_argument("out", nargs="?", type=Path, default=Path("/tmp/segpipe-gpu"))
    args = p.parse_args()
    pack() if args.action == "pack" else unpack(args.out)


if __name__ == "__main__":
    main()
