"""The engine cache: pure key function, verified lookups, listing and clearing (no GPU needed)."""
import json
import os

import pytest

from engine import cache

BASE = dict(onnx_sha256="a" * 64, trt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3", compute_capability=(9, 0),
            precision="fp16", input_size=(144, 192), batch_range=(1, 8))
CHANGES = {
    "onnx_sha256": "b" * 64,
    "trt_version": "10.4.0",
    "gpu_name": "NVIDIA A100-SXM4-40GB",
    "compute_capability": (8, 0),
    "precision": "fp32",
    "input_size": (240, 320),
    "batch_range": (1, 16),
}


def test_key_is_pure_and_stable():
    assert cache.engine_key(**BASE) == cache.engine_key(**BASE)
    assert cache.key_digest(cache.engine_key(**BASE)) == cache.key_digest(cache.engine_key(**dict(BASE)))
    # lists and tuples, "9.0" and (9, 0) name the same key
    same = dict(BASE, input_size=[144, 192], batch_range=[1, 8], compute_capability="9.0")
    assert cache.key_digest(cache.engine_key(**same)) == cache.key_digest(cache.engine_key(**BASE))


@pytest.mark.parametrize("field", sorted(CHANGES))
def test_key_changes_when_each_input_changes(field):
    before = cache.key_digest(cache.engine_key(**BASE))
    after = cache.key_digest(cache.engine_key(**dict(BASE, **{field: CHANGES[field]})))
    assert after != before


def test_only_key_inputs_matter(tmp_path):
    """Storing under one key, then looking up with an equal key built separately, hits."""
    key = cache.engine_key(**BASE)
    cache.store(key, b"plan-bytes", ".engine", root=tmp_path, build_seconds=1.0)
    hit = cache.lookup(cache.engine_key(**BASE), ".engine", root=tmp_path)
    assert hit.hit and hit.path.read_bytes() == b"plan-bytes"
    for field, value in CHANGES.items():
        assert not cache.lookup(cache.engine_key(**dict(BASE, **{field: value})), ".engine", root=tmp_path).hit


def test_lookup_rejects_damaged_or_foreign_entries(tmp_path):
    key = cache.engine_key(**BASE)
    path = cache.store(key, b"plan-bytes", ".engine", root=tmp_path)
    meta_path = tmp_path / (path.name[: -len(".engine")] + cache.KEY_SUFFIX)
    assert json.loads(meta_path.read_text())["key"] == key  # the key JSON sits beside the engine

    path.write_bytes(b"plan-bytez")  # same size, other bytes
    miss = cache.lookup(key, ".engine", root=tmp_path)
    assert not miss.hit and "SHA-256" in miss.reason

    path.write_bytes(b"plan")  # truncated
    assert not cache.lookup(key, ".engine", root=tmp_path).hit

    cache.store(key, b"plan-bytes", ".engine", root=tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["key"]["precision"] = "fp32"  # a sidecar copied from another entry
    meta_path.write_text(json.dumps(meta))
    miss = cache.lookup(key, ".engine", root=tmp_path)
    assert not miss.hit and "different key" in miss.reason

    meta_path.write_text("{not json")
    assert "unreadable" in cache.lookup(key, ".engine", root=tmp_path).reason

    meta_path.unlink()
    assert cache.lookup(key, ".engine", root=tmp_path).reason == "no cached entry for this key"


def test_missing_artifact_is_a_miss(tmp_path):
    key = cache.engine_key(**BASE)
    cache.store(key, b"x", ".engine", root=tmp_path).unlink()
    miss = cache.lookup(key, ".engine", root=tmp_path)
    assert not miss.hit and "missing" in miss.reason


def test_entries_and_clear(tmp_path):
    good = cache.engine_key(**BASE)
    bad = cache.engine_key(**dict(BASE, precision="fp32"))
    cache.store(good, b"good", ".engine", root=tmp_path)
    cache.store(bad, b"bad", ".engine", root=tmp_path).write_bytes(b"BAD")
    rows = {r["key"]["precision"]: r for r in cache.entries(tmp_path)}
    assert rows["fp16"]["ok"] and not rows["fp32"]["ok"]
    assert rows["fp16"]["key"] == good
    (tmp_path / "timing-trt10-x.cache").write_bytes(b"t")
    assert cache.clear(tmp_path) == 5
    assert cache.entries(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SEGPIPE_CACHE")
    assert cache.cache_dir().parts[-3:] == (".cache", "segpipe", "engines")


def test_lookup_covering_takes_the_narrowest_verified_wider_range(tmp_path):
    want = cache.engine_key(**dict(BASE, batch_range=(1, 4)))
    for hi in (16, 8):
        cache.store(cache.engine_key(**dict(BASE, batch_range=(1, hi))), f"plan {hi}".encode(), ".engine", root=tmp_path)
    cache.store(cache.engine_key(**dict(BASE, batch_range=(1, 2))), b"plan 2", ".engine", root=tmp_path)   # too narrow
    cache.store(cache.engine_key(**dict(BASE, batch_range=(1, 6), precision="fp32")), b"fp32", ".engine", root=tmp_path)
    hit, found = cache.lookup_covering(want, ".engine", root=tmp_path)
    assert hit.hit and hit.path.read_bytes() == b"plan 8" and found["batch_range"] == [1, 8]
    hit.path.write_bytes(b"plan X")                         # damaged: the next wider one
    hit, found = cache.lookup_covering(want, ".engine", root=tmp_path)
    assert hit.path.read_bytes() == b"plan 16" and found["batch_range"] == [1, 16]
    exact = cache.engine_key(**dict(BASE, batch_range=(1, 2)))
    assert cache.lookup_covering(exact, ".engine", root=tmp_path)[1] == exact     # its own entry first
    miss, found = cache.lookup_covering(cache.engine_key(**dict(BASE, batch_range=(1, 32))), ".engine", root=tmp_path)
    assert not miss.hit and miss.reason == "no cached entry for this key"


def test_writers_of_one_key_never_share_a_temporary_file(tmp_path):
    """Threads storing one key each write a file of their own and rename it: no error, and the entry is
    one writer's whole plan (a sidecar from another writer is a SHA mismatch, a miss, never a wrong plan)."""
    import threading
    key = cache.engine_key(**BASE)
    plans = [bytes([i]) * 200_000 for i in range(8)]
    errors = []

    def store(plan):
        try:
            cache.store(key, plan, ".engine", root=tmp_path)
        except Exception as e:      # noqa: BLE001 - what the test is about
            errors.append(e)

    threads = [threading.Thread(target=store, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (artifact,) = tmp_path.glob("*.engine")
    assert not errors and artifact.read_bytes() in plans and not list(tmp_path.glob(".*.tmp"))
    umask = os.umask(0)
    os.umask(umask)
    assert artifact.stat().st_mode & 0o777 == 0o666 & ~umask      # readable by others as the umask says
    hit = cache.lookup(key, ".engine", root=tmp_path)
    assert hit.path is None or hit.path.read_bytes() in plans


@pytest.fixture
def unwritable_cache(tmp_path, monkeypatch):
    """SEGPIPE_CACHE under a file: no folder can be made there (unlike a read-only mode, root obeys it)."""
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path / "a-file" / "engines"))
    monkeypatch.setattr(cache, "_scratch", None)
    yield
    if cache._scratch is not None:            # atexit would remove it at the end of the session
        import shutil
        shutil.rmtree(cache._scratch)


def test_an_unwritable_cache_keeps_this_process_builds_in_a_scratch_folder(unwritable_cache, caplog):
    key = {"kind": "onnx", "x": 1}
    assert cache.unwritable(cache.cache_dir()) is not None
    with caplog.at_level("WARNING", logger="segpipe.engine"):
        path = cache.store(key, b"plan", ".onnx")
        again = cache.store({"kind": "onnx", "x": 2}, b"other", ".onnx")
    assert path.parent == again.parent == cache._scratch and path.read_bytes() == b"plan"
    assert cache.lookup(key, ".onnx").path == path                       # found again in this process
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and str(cache.cache_dir()) in warnings[0] and "set SEGPIPE_CACHE" in warnings[0]


def test_a_read_only_cache_is_still_read(tmp_path, monkeypatch):
    key = {"kind": "onnx", "x": 1}
    built = cache.store(key, b"plan", ".onnx", root=tmp_path)
    monkeypatch.setenv("SEGPIPE_CACHE", str(tmp_path))
    monkeypatch.setattr(cache, "_scratch", tmp_path / "elsewhere")      # as after a failed store
    assert cache.lookup(key, ".onnx").path == built
