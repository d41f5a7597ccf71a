"""The streaming segmentation pipeline: decode -> preprocess -> infer -> colourise -> encode.

Public API (imported lazily, so ``segpipe --help`` stays fast)::

    from pipeline.run import run                 # run(src, out, settings) -> stats dict
    from pipeline import segment                 # for frame in segment(src): frame.labels_full, ...
    from pipeline.graph import build_pipeline    # the wiring: build_pipeline(source, backend, settings, ...)
    from pipeline.stage import Stage             # base class of every stage (a new sink is one subclass)
    from pipeline.settings import load_settings  # configs/pipeline.yaml + overrides -> Settings
    from pipeline.sources import open_source     # file, URL, camera, image folder or glob
"""
from __future__ import annotations

_EXPORTS = {
    "segment": "pipeline.stream",
    "build_pipeline": "pipeline.graph",
    "Pipeline": "pipeline.runner",
    "StageError": "pipeline.runner",
    "Stage": "pipeline.stage",
    "Frame": "pipeline.frame",
    "Settings": "pipeline.settings",
    "load_settings": "pipeline.settings",
    "open_source": "pipeline.sources",
    "BoundedQueue": "pipeline.queues",
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        import importlib
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
