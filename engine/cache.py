"""On-disk cache of built artefacts (TensorRT engines, ONNX exports, CPU backend choices).

Each entry is two files in ``cache_dir()``::

    <kind>-<digest><suffix>   the artefact (engine plan, .onnx, ...)
    <kind>-<digest>.key.json  {"kind", "key", "artifact", "sha256", "bytes", "created", ...}

``digest`` hashes the key, so any change of a key field (ONNX hash, TensorRT version, GPU,
precision, size, batch range, ...) names a different entry and triggers a build; nothing else
does, except that an engine built for a wider batch range serves a narrower one
(``lookup_covering``: ``segpipe build --max-batch 8`` serves a run at batch 4 and a live view at 1).
Before use, an entry is verified against its sidecar: the stored key must equal the wanted key and
the artefact's SHA-256 must match, so a truncated or hand-copied file is rebuilt instead of being
loaded. A cache that cannot be written (a read-only container, a HOME that is not a folder) is still
read; what a process builds then goes to a temporary folder of its own, removed when it exits, and a
warning says how to keep it. Everything here is pure file logic (no GPU needed).
"""
from __future__ import annotations

import atexit
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from train.paths import write_test

log = logging.getLogger("segpipe.engine")

DEFAULT_CACHE = Path("~/.cache/segpipe/engines")
KEY_SUFFIX = ".key.json"


def cache_dir() -> Path:
    """``$SEGPIPE_CACHE`` if set, else ``~/.cache/segpipe/engines``."""
    return Path(os.environ.get("SEGPIPE_CACHE") or DEFAULT_CACHE).expanduser()


_scratch: Path | None = None          # where this process stores when cache_dir() cannot be written
_scratch_lock = threading.Lock()


def unwritable(root: Path) -> str | None:
    """Why nothing can be stored in ``root`` (made if missing), or None when it can."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        write_test(root)
    except OSError as e:
        return e.strerror or str(e)
    return None


def _scratch_dir(root: Path, error: OSError) -> Path:
    global _scratch
    with _scratch_lock:
        if _scratch is None:
            _scratch = Path(tempfile.mkdtemp(prefix="segpipe-cache-"))
            atexit.register(shutil.rmtree, _scratch, ignore_errors=True)
            log.warning("cannot write the engine cache %s (%s): this run keeps what it builds in %s until it ends, "
                        "and the next builds it again; set SEGPIPE_CACHE to a folder you can write to",
                        root, error.strerror or error, _scratch)
        return _scratch


def _roots(root: Path | None) -> list[Path]:
    """Where to look: ``root`` if given, else the cache and this process's scratch folder (if it has one)."""
    return [root] if root is not None else [cache_dir(), *([_scratch] if _scratch is not None else [])]


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_digest(key: dict) -> str:
    """Stable short hash of a key dict (order-independent, JSON types only)."""
    canon = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:20]


def engine_key(*, onnx_sha256: str, trt_version: str, gpu_name: str, compute_capability: tuple[int, int] | str,
               precision: str, input_size: tuple[int, int], batch_range: tuple[int, int],
               builder: str = "tensorrt") -> dict:
    """The identity of a TensorRT engine: change any field and the engine is rebuilt."""
    cc = compute_capability if isinstance(compute_capability, str) else f"{compute_capability[0]}.{compute_capability[1]}"
    return {
        "kind": "engine",
        "builder": builder,
        "onnx_sha256": onnx_sha256,
        "trt_version": str(trt_version),
        "gpu": str(gpu_name),
        "compute_capability": cc,
        "precision": precision,
        "input_size": [int(input_size[0]), int(input_size[1])],
        "batch_range": [int(batch_range[0]), int(batch_range[1])],
    }


@dataclass
class Lookup:
    """Result of a cache lookup: ``path`` is set on a verified hit, ``reason`` says why not otherwise."""
    path: Path | None
    reason: str

    @property
    def hit(self) -> bool:
        return self.path is not None


def _paths(key: dict, suffix: str, root: Path) -> tuple[Path, Path]:
    stem = f"{key.get('kind', 'entry')}-{key_digest(key)}"
    return root / f"{stem}{suffix}", root / f"{stem}{KEY_SUFFIX}"


def lookup(key: dict, suffix: str, root: Path | None = None) -> Lookup:
    """Find the artefact for ``key`` and verify it; never raises for a bad entry (it is a miss)."""
    found = [_lookup(key, suffix, r) for r in _roots(root)]
    return next((f for f in found if f.hit), found[0])


def _lookup(key: dict, suffix: str, root: Path) -> Lookup:
    artifact, meta_path = _paths(key, suffix, root)
    if not meta_path.exists():
        return Lookup(None, "no cached entry for this key")
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return Lookup(None, f"{meta_path.name} is unreadable")
    if meta.get("key") != key:
        return Lookup(None, f"{meta_path.name} was written for a different key")
    if not artifact.exists():
        return Lookup(None, f"{artifact.name} is missing")
    if artifact.stat().st_size != meta.get("bytes") or file_sha256(artifact) != meta.get("sha256"):
        return Lookup(None, f"{artifact.name} does not match its recorded SHA-256 (truncated or replaced)")
    return Lookup(artifact, "verified")


def lookup_covering(key: dict, suffix: str, root: Path | None = None) -> tuple[Lookup, dict]:
    """``lookup``, or else the verified entry whose key differs only by a batch range that holds ``key``'s
    (the narrowest such). Returns the lookup and the key it found."""
    exact = lookup(key, suffix, root)
    if exact.hit or "batch_range" not in key:
        return exact, key
    lo, hi = key["batch_range"]
    rest = {k: v for k, v in key.items() if k != "batch_range"}
    wider = []
    for meta_path in (m for r in _roots(root) for m in r.glob(f"{key.get('kind', 'entry')}-*{KEY_SUFFIX}")):
        try:
            found = json.loads(meta_path.read_text())["key"]
            (flo, fhi), frest = found["batch_range"], {k: v for k, v in found.items() if k != "batch_range"}
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if frest == rest and flo <= lo and fhi >= hi:
            wider.append(found)
    for found in sorted(wider, key=lambda k: k["batch_range"][1] - k["batch_range"][0]):
        hit = lookup(found, suffix, root)
        if hit.hit:
            return hit, found
    return exact, key


def store(key: dict, data: bytes, suffix: str, root: Path | None = None, **meta) -> Path:
    """Write artefact then sidecar, each atomically, so a crash never leaves a verifiable half entry.
    Without ``root``: in the cache, or if it cannot be written, in this process's scratch folder."""
    if root is not None:
        return _store(key, data, suffix, root, meta)
    try:
        return _store(key, data, suffix, cache_dir(), meta)
    except OSError as e:
        return _store(key, data, suffix, _scratch_dir(cache_dir(), e), meta)


def _store(key: dict, data: bytes, suffix: str, root: Path, meta: dict) -> Path:
    artifact, meta_path = _paths(key, suffix, root)
    artifact.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(artifact, data)
    record = {"kind": key.get("kind"), "key": key, "artifact": artifact.name, "sha256": hashlib.sha256(data).hexdigest(),
              "bytes": len(data), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta}
    _atomic_write(meta_path, json.dumps(record, indent=2, sort_keys=True).encode())
    return artifact


def entries(root: Path | None = None) -> list[dict]:
    """Every entry in the cache with its key, newest first; ``ok`` is False for a damaged one."""
    root = root or cache_dir()
    rows = []
    for meta_path in sorted(root.glob(f"*{KEY_SUFFIX}")) if root.is_dir() else []:
        try:
            meta = json.loads(meta_path.read_text())
            key = meta["key"]
        except (OSError, ValueError, KeyError, TypeError):
            rows.append({"file": meta_path.name, "ok": False, "reason": "unreadable sidecar", "key": {}})
            continue
        suffix = Path(meta.get("artifact", "")).suffix
        check = lookup(key, suffix, root)
        rows.append({**meta, "file": meta.get("artifact", meta_path.name), "ok": check.hit, "reason": check.reason})
    rows.sort(key=lambda r: r.get("created", ""), reverse=True)
    return rows


def _atomic_write(path: Path, data: bytes) -> None:
    """Write beside ``path`` under a name of its own (two threads or processes storing one key each
    write their own file), then rename over it. (Not mkstemp: its files are private, whatever the umask.)"""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def clear(root: Path | None = None) -> int:
    """Delete every entry (artefact and sidecar) and the TensorRT timing caches; returns the number of files removed."""
    root = root or cache_dir()
    if not root.is_dir():
        return 0
    doomed = set(root.glob(f"*{KEY_SUFFIX}")) | set(root.glob("timing-*.cache"))
    for meta_path in list(doomed):
        stem = meta_path.name[: -len(KEY_SUFFIX)] if meta_path.name.endswith(KEY_SUFFIX) else None
        if stem:
            doomed |= {p for p in root.glob(f"{stem}.*")}
    for path in doomed:
        path.unlink(missing_ok=True)
    return len(doomed)
