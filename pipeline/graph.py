"""The one place the segmentation app is wired, top to bottom like its diagram::

    decode -> preprocess -> infer -> colourise -> [masks] -> [sinks ...] -> [encode]

Every arrow is a bounded queue with a capacity and a named policy. The queue after the source takes
``queues.policy`` (auto: ``block`` for files, ``drop-oldest`` for live sources); the others take
``queues.downstream_policy`` (``block``: backpressure, so a live source drops at the door rather than
after inference).
"""
from __future__ import annotations

import threading
from pathlib import Path

from pipeline.colourise import Colourise
from pipeline.decode import Decode
from pipeline.infer import Infer
from pipeline.masks import MaskWriter, mask_names
from pipeline.preprocess import Preprocess
from pipeline.runner import Pipeline
from pipeline.settings import Settings
from pipeline.stage import Stage


def source_policy(settings: Settings, live: bool) -> str:
    policy = settings.queues.policy
    if policy == "auto":
        return "drop-oldest" if live else "block"
    return policy


def output_size(width: int, height: int, view: str) -> tuple[int, int]:
    return (2 * width if view == "side-by-side" else width), height


def model_stages(backend, settings: Settings, *, batch: int | None = None,
                 keep_labels: bool = False) -> tuple[Preprocess, Infer, Colourise]:
    """The stages around the model: resize to its input, batched inference, colours over the input.
    ``batch``: frames per inference call (default ``infer.batch``; Infer clamps it to the backend's)."""
    s = settings
    return (Preprocess(backend.input_size, backend.device, s.preprocess.interpolation),
            Infer(backend, s.infer.batch if batch is None else batch, s.infer.max_wait_ms),
            Colourise(backend.palette, backend.class_names, backend.device, view=s.colourise.view,
                      alpha=s.colourise.alpha, legend=s.colourise.legend, keep_labels=keep_labels))


def build_pipeline(source, backend, settings: Settings, *, masks: str | Path | None = None,
                   sinks: list[Stage] = (), encode: Stage | None = None, decode: Stage | None = None,
                   model_policy: str | None = None) -> Pipeline:
    """Wire source -> ... -> outputs. ``masks``: a folder for label PNGs; ``sinks``: more stages (a
    display, an HTTP stream); ``encode``: the --out writer (``run.open_output``: an Encode, or an
    ImageWriter for one frame; made by the caller before the model loads, so a bad --out fails at once).
    Each output passes the frame on (returns it), except the last stage of all, whose returned frames
    count as delivered.
    ``decode``: a decode stage of the caller's (live capture stamps); ``model_policy``: the policy of
    the queue in front of the model (live: ``drop-oldest``, so the model never works on a stale frame)."""
    s, info = settings, source.info
    decode = decode if decode is not None else Decode(source, s.decode.max_frames, s.decode.stall_timeout_s)
    outputs: list[Stage] = []
    if masks is not None:
        outputs.append(MaskWriter(masks, compression=s.encode.png_compression,
                                  names=mask_names(getattr(source, "files", None))))
    outputs.extend(sinks)
    if encode is not None:
        outputs.append(encode)
    if not outputs:
        raise ValueError("build_pipeline needs an output: masks, a sink or an encoder")
    preprocess, infer, colourise = model_stages(backend, s, keep_labels=any(out.wants_labels for out in outputs))

    capacity, inner = s.queues.capacity, s.queues.downstream_policy
    pipe = Pipeline("segment")
    if isinstance(getattr(source, "stop", None), threading.Event):   # a source that waits on its own (a live
        source.stop = pipe.stop_event    # capture, the caller's queue) stops waiting when the pipeline stops
    pipe.add_flow(decode, preprocess, capacity=capacity, policy=source_policy(s, info.live))
    pipe.add_flow(preprocess, infer, capacity=max(capacity, infer.batch), policy=model_policy or inner)
    pipe.add_flow(infer, colourise, capacity=max(capacity, infer.batch), policy=inner)
    upstream = colourise
    for sink in outputs:
        pipe.add_flow(upstream, sink, capacity=capacity, policy=inner)
        upstream = sink
    return pipe
