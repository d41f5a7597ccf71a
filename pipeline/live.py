"""`segpipe live`: the live demo. A camera, stream or file, segmented with the newest frame first, shown
in a window (--show) and/or a browser (--serve), optionally recorded (--record).

The same pipeline as `segpipe run` (``build_pipeline``: decode -> preprocess -> infer -> colourise ->
sinks), wired for latency instead of completeness::

    LiveSource -> decode =[drop-oldest, 1]=> preprocess =[drop-oldest, 1]=> infer =[block, 1]=> colourise
               -> [display] -> [serve] -> [record]                      (block, 1 between the sinks)

- the capture never waits: the queue after decode and the one in front of the model keep only the
  newest frame and count what they drop; after inference nothing is thrown away (blocking, capacity 1);
- batch 1 by default; each frame's latency runs from its capture to the moment it is on screen
  (display) or published to the browser viewers (serve);
- a file without --realtime plays every frame as fast as the model goes (all queues block, nothing is
  dropped: like `segpipe run` with a window); with --realtime it is paced like a camera;
- a camera or stream that drops is reopened with backoff (live_source.Reconnect);
- q/Esc, the window's close button, --duration, SIGINT (exit 130) or SIGTERM (exit 0) end the demo
  cleanly: the recording is closed and the statistics written (the `segpipe run --stats` schema plus a
  ``live`` section). A stop while starting (before the pipeline runs) writes none and records
  nothing: Ctrl-C exits 130, SIGTERM 143.
"""
from __future__ import annotations

import argparse
import logging
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from engine import PRECISIONS
from pipeline.settings import VIEWS, LiveSettings   # its defaults: the live section of configs/pipeline.yaml
from pipeline.signals import SigTerm, signals_handled, signals_raise
from train.errors import InvalidInputError, TerminatedError, plural
from train.paths import missing_folders, remove_empty, writable_file, write_json

log = logging.getLogger("segpipe.live")

STATUS_EVERY_S = 10.0
DRAIN_S = 2.0          # after a quit, the frames already captured get this long to finish

EPILOG = """examples:
  segpipe live --show                                      the default camera (0) in a window
  segpipe live /dev/video2 --serve                         watch at http://127.0.0.1:8080/
  segpipe live rtsp://cam.local/stream --serve 0.0.0.0:8080 --record drive.mp4
  segpipe live drive.mp4 --realtime --show --stats live.json   a file paced like a camera

Window keys: q/Esc quit, space pause, v overlay/mask/side-by-side, +/- overlay opacity.
Live keeps latency low: the newest frame is processed and older ones are dropped (counted, shown in
the HUD). A file without --realtime plays every frame as fast as the model goes instead.
A camera or stream that drops is reopened (--reconnect-attempts, --reconnect-backoff).
Exit status: 0 done or quit, 1 the source was lost or failed, 2 bad input or option, 130 Ctrl-C, 143
SIGTERM while starting (a stop while starting records nothing and writes no --stats).
"""


# --- the command ------------------------------------------------------------------------------------
def register(sub, formatter) -> None:
    p = sub.add_parser("live", argument_default=argparse.SUPPRESS, formatter_class=formatter, epilog=EPILOG,
                       help="live demo: camera, stream or file in a window or a browser, newest frame first",
                       description="Segment a camera, stream or file live, newest frame first, and show it in "
                                   "a window (--show) and/or a browser (--serve); optionally record it.")
    p.add_argument("src", nargs="?", help="camera index (default 0), /dev/videoN, stream URL (rtsp, http, "
                                          "udp, tcp ...) or video file")
    p.add_argument("--show", action="store_true", help="show an OpenCV window (needs opencv-python, not -headless)")
    p.add_argument("--serve", nargs="?", const="127.0.0.1:8080", metavar="HOST:PORT",
                   help="serve a browser view (MJPEG + live stats) at HOST:PORT (default 127.0.0.1:8080; "
                        "0.0.0.0:PORT for every interface)")
    p.add_argument("--record", metavar="OUT", help="also write what is shown to a video file")
    p.add_argument("--realtime", action="store_true", help="pace a file at its native frame rate, as a camera")
    p.add_argument("--loop", action="store_true", help="start a file again at its end")
    p.add_argument("--weights", help="checkpoint (default: the shipped model)")
    p.add_argument("--backend", help="inference backend: auto, torch-cpu, onnxruntime, torch-cuda, tensorrt ...")
    p.add_argument("--precision", choices=PRECISIONS, help="asked of the backend")
    p.add_argument("--device", help="cpu, cuda or cuda:N")
    p.add_argument("--batch", type=int, help="frames per inference call, at most (default: 1, lowest latency)")
    p.add_argument("--size", metavar="HxW", help="model input size, e.g. 288x384 (default: the checkpoint's, turned for a portrait source)")
    p.add_argument("--view", choices=VIEWS, help="what to draw first (key v cycles)")
    p.add_argument("--alpha", type=float, help="overlay opacity 0..1 (keys +/-)")
    p.add_argument("--no-legend", dest="legend", action="store_false", default=argparse.SUPPRESS,
                   help="do not draw the classes present")
    p.add_argument("--no-hud", dest="hud", action="store_false", default=argparse.SUPPRESS,
                   help="no fps/latency/drops in the window")
    p.add_argument("--stats", metavar="FILE", help="write the statistics as JSON at exit (the `run --stats` schema)")
    p.add_argument("--config", metavar="FILE", help="pipeline settings (default: configs/pipeline.yaml)")
    p.add_argument("--frames", type=int, metavar="N", help="stop after N captured frames")
    p.add_argument("--duration", type=float, metavar="S", help="stop after S seconds")
    p.add_argument("--reconnect-attempts", type=int, metavar="N",
                   help=f"reopen a dropped camera/stream at most N times (default {LiveSettings.reconnect_attempts}; 0: never)")
    p.add_argument("--reconnect-backoff", type=float, metavar="S",
                   help=f"wait before the first reconnect, doubling each attempt up to "
                        f"{LiveSettings.reconnect_backoff_max_s:g} s (default {LiveSettings.reconnect_backoff_s:g})")
    p.add_argument("--jpeg-quality", type=int, metavar="Q", help="browser view JPEG quality 1..100 (default 80)")
    p.set_defaults(func=live_command)     # legend, hud: absent unless given, so the config's live section applies


def live_command(args) -> int:
    from pipeline.run import check_report, files_read, summary
    from pipeline.settings import load_settings

    a = {k: v for k, v in vars(args).items()}
    get = a.get
    if not (get("show") or get("serve") or get("record")):
        raise InvalidInputError("nothing to show: pass --show (a window), --serve [HOST:PORT] (a browser) "
                                "and/or --record OUT.mp4")
    if get("duration") is not None and get("duration") <= 0:
        raise InvalidInputError(f"--duration {get('duration')} must be > 0 seconds")
    if get("stats") is not None:          # run_live checks it against the input and --record
        check_report(get("stats"), "--stats", None, *files_read(get("config"), get("weights")))
    settings = load_settings(get("config"),
                             infer={"weights": get("weights"), "backend": get("backend"),
                                    "precision": get("precision"), "device": get("device"), "size": get("size")},
                             decode={"max_frames": get("frames")},
                             colourise={"view": get("view"), "alpha": get("alpha")})
    options = {k: v for k, v in {"realtime": get("realtime"), "loop": get("loop"), "batch": get("batch"),
                                 "reconnect_attempts": get("reconnect_attempts"),
                                 "reconnect_backoff_s": get("reconnect_backoff"),
                                 "jpeg_quality": get("jpeg_quality"), "legend": get("legend"),
                                 "hud": get("hud")}.items() if v is not None}
    live = replace(settings.live, **options)        # flags override the config's live section
    src = get("src") if get("src") is not None else "0"
    stats = run_live(src, settings, live, show=bool(get("show")), serve=get("serve"), record=get("record"),
                     stats_path=get("stats"), duration_s=get("duration"))
    print(summary(stats, get("record")) + _live_summary(stats))
    if stats["live"]["exit"] == "SIGINT":
        return 130
    return 0


def _live_summary(stats: dict) -> str:
    s = stats["live"]
    thirds = "/".join(f"{v:.0f}" for v in s["latency_p95_ms_by_third"])
    where = {"display": "window", "serve": "browser stream", "record": "recording"}[s["view"]]
    extra = f"; latency measured at the {where}, p99 {stats['latency_ms']['p99']:.0f} ms, p95 by third {thirds} ms"
    if s["reconnects"]:
        extra += f", {s['reconnects']} reconnect(s)"
    if stopped := stats["dropped_by"].get("stopped"):
        extra += f", {plural(stopped, 'frame')} still on the way at the stop (dropped)"
    return extra


# --- running ----------------------------------------------------------------------------------------
def live_pipeline_settings(settings, live: LiveSettings, latest: bool):
    """The pipeline settings for live: small batch, tiny queues; drop-oldest at the door when live."""
    return settings.override(infer={"batch": live.batch, "max_wait_ms": live.max_wait_ms},
                             queues={"capacity": live.queue_capacity,
                                     "policy": "drop-oldest" if latest else "block",
                                     "downstream_policy": "block"},
                             colourise={"legend": live.legend})


def low_delay_decode(decode, spec):
    """For a camera or stream: slice-threaded decoding (frame threads each hold a frame back, latency the
    capture stamp cannot see) and no demuxer buffering, unless the config chose otherwise."""
    text = str(spec)
    if not (isinstance(spec, int) or text.isdigit() or text.startswith("/dev/video")
            or ("://" in text and not text.startswith("file:"))):
        return decode
    thread_type = "SLICE" if decode.thread_type.upper() == "AUTO" else decode.thread_type
    return replace(decode, thread_type=thread_type, options={"fflags": "nobuffer", **(decode.options or {})})


def run_live(src, settings=None, live: LiveSettings | None = None, *, show: bool = False,
             serve: str | None = None, record: str | Path | None = None, stats_path: str | Path | None = None,
             duration_s: float | None = None, backend=None, window=None, state=None, opener=None) -> dict:
    """Run the live demo until the source ends, a quit (key, signal, ``state.request_quit``) or
    ``duration_s``; return the statistics. Raises MediaError (after writing the statistics) when a
    camera or stream is lost for good. ``backend``, ``window`` (a fake OpenCV window), ``state`` and
    ``opener`` (instead of ``open_source``) are for tests and embedding."""
    from pipeline.display import KEYS_HELP, Display, gui_problem
    from pipeline.graph import build_pipeline, output_size
    from pipeline.hud import LiveState, hud_lines
    from pipeline.live_source import LiveDecode, LiveSource, Reconnect
    from pipeline.record import Record
    from pipeline.run import (apply_threads, as_input, check_report, load_backend, settings_path,
                              write_run_settings)
    from pipeline.server import FrameHub, LiveServer, Serve, parse_address
    from pipeline.settings import load_settings
    from pipeline.sources import open_source

    settings = settings or load_settings()
    live = live if live is not None else settings.live
    if not (show or serve or record):
        raise InvalidInputError("nothing to show: pass show, serve and/or record")
    if show and window is None and (problem := gui_problem()):
        raise InvalidInputError(problem)
    reconnect = Reconnect(live.reconnect_attempts, live.reconnect_backoff_s, live.reconnect_backoff_max_s)
    made = missing_folders(record, stats_path)      # made by the checks; taken back if the start fails
    try:
        if record is not None:
            record = writable_file(record, "--record", "live.mp4")
            if what := as_input(record, src):
                raise InvalidInputError(f"--record {record} is {what}: write to another file")
        if stats_path is not None:
            stats_path = writable_file(stats_path, "--stats", "live.json")
            check_report(stats_path, "--stats", src, ("the --record video", record),
                         ("the settings file written beside --record", record and settings_path(record)))
    except BaseException:
        remove_empty(made)
        raise
    state = state if state is not None else LiveState(settings.colourise.view, settings.colourise.alpha)
    state.view, state.alpha = settings.colourise.view, settings.colourise.alpha

    hub = server = source = display = recorder = None
    with signals_raise():                 # a stop while starting closes what is open (no statistics yet)
        try:
            if serve is not None:
                hub = FrameHub()
                host, port = parse_address(serve)
                server = LiveServer(host, port, hub, lambda: state.snapshot("serve"))   # binds now: a busy port fails first
            settings = replace(settings, decode=low_delay_decode(settings.decode, src))
            source = LiveSource(src, settings.decode, realtime=live.realtime, loop=live.loop, reconnect=reconnect,
                                state=state, opener=opener or open_source)
            settings = live_pipeline_settings(settings, live, source.latest)
            info = source.info
            if record is not None:            # tried before the model loads: a bad --record fails at once
                w, h = output_size(info.width, info.height, settings.colourise.view)
                recorder = Record.from_settings(record, w, h, info, settings.encode)
            apply_threads(settings)
            backend = backend if backend is not None else load_backend(settings, (info.height, info.width))
            sinks = []
            if show:                          # opened here: window calls stay in this (the main) thread
                display = Display(state, window=window, title=f"segpipe live: {info.name}", hud=live.hud)
                display.open()
                sinks.append(display)
            if serve is not None:
                sinks.append(Serve(hub, state.tracker("serve"), quality=live.jpeg_quality))
            if recorder is not None:
                sinks.append(recorder)
            # capture stamps come from the live source; the model only ever sees the newest frame
            pipe = build_pipeline(source, backend, settings, sinks=sinks,
                                  decode=LiveDecode(source, settings.decode.max_frames),
                                  model_policy="drop-oldest" if source.latest else None)
            if record is not None:
                write_run_settings(record, settings, pipe, backend, info, size=recorder.size, codec=recorder.codec,
                                   live=asdict(live))
        except BaseException as e:
            if source is not None:
                source.close()
            if server is not None:
                server.stop()
            if display is not None:
                display.close()
            if recorder is not None:          # unlocks the recording; one not begun is removed
                recorder.teardown()
            remove_empty(made)
            if isinstance(e, SigTerm):
                raise TerminatedError("terminated (SIGTERM) before the first frame: nothing was recorded") from None
            raise

    state.colourise = pipe["colourise"]
    state.drops = lambda: pipe.drops + source.skipped
    state.info = {"source": info.name, "backend": backend.name, "device": str(backend.device)}
    mode = ("live stream" if source.stream else "paced at its frame rate" if source.paced
            else "every frame, as fast as the model goes (add --realtime to pace it like a camera)")
    log.info("live: %s (%dx%d @ %.4g fps), %s", info.name, info.width, info.height, float(info.fps), mode)
    if show:
        log.info("window open; %s", KEYS_HELP)
    if server is not None:
        server.start()
        host = server.address[0]
        log.info("watch at %s%s", server.url, "  (every interface: anyone on this network can watch)"
                 if host in ("0.0.0.0", "::") else "")

    t0 = time.perf_counter()
    next_status = [t0 + STATUS_EVERY_S]
    view = "display" if show else "serve" if serve is not None else None

    stopping = []                         # when the quit came

    def tick():
        now = time.perf_counter()
        if duration_s is not None and now - t0 >= duration_s:
            state.request_quit("duration")
        if state.quit.is_set() and not stopping:
            stopping.append(now)
            source.end.set()              # capture ends; the frames captured finish (recorded, counted)
            if state.quit_reason in ("key", "window closed"):
                pipe.stop()               # the viewer is gone: those on the way are dropped (counted)
        elif stopping and now - stopping[0] > DRAIN_S and not pipe.stop_event.is_set():
            pipe.stop()
        if now >= next_status[0]:
            next_status[0] = now + STATUS_EVERY_S
            snap = state.snapshot(view)
            log.info("%s", ", ".join(hud_lines(snap)))

    try:
        with _stop_on_signals(state):
            pipe.run(on_tick=tick, tick_s=0.05, wait=display.pump if display is not None else None)
    finally:                              # also after a stage failed: the statistics say how far it got
        if display is not None:
            display.close()
        if server is not None:
            server.stop()
        stats = live_stats(pipe, time.perf_counter() - t0, backend, source, state, view)
        if stats_path is not None:
            write_json(stats_path, stats, "the statistics", log)
    if source.error is not None:
        raise source.error
    return stats


def _stop_on_signals(state):
    """SIGINT and SIGTERM ask the demo to stop (cleanly: outputs closed, stats written); a second
    Ctrl-C interrupts at once."""
    def handler(signum, frame):
        if signum == signal.SIGINT and state.quit_reason == "SIGINT":      # the second Ctrl-C
            raise KeyboardInterrupt
        state.request_quit(signal.Signals(signum).name)

    return signals_handled(handler)


# --- statistics -------------------------------------------------------------------------------------
def live_stats(pipe, wall_s: float, backend, source, state, view: str | None) -> dict:
    """``segpipe run --stats``'s schema, measured at the live view (the window, else the browser stream,
    else the recording), plus a ``live`` section: per-view latency, drops by cause, reconnects, and the
    p95 latency of each third of the run (growth shows as a rising last third)."""
    from pipeline.run import collect_stats, percentiles_ms

    stats = collect_stats(pipe, wall_s, backend, skipped=source.skipped, damaged=source.damaged)
    views = {}
    for name, tracker in state.trackers.items():
        p50, p95, p99 = percentiles_ms(tracker.latency_s, (50, 95, 99))
        views[name] = {"frames": tracker.frames, "p50": p50, "p95": p95, "p99": p99}
    if "record" in (s.name for s in pipe.stages):
        rec = pipe["record"]
        p50, p95, p99 = percentiles_ms(rec.latency_s, (50, 95, 99))
        views["record"] = {"frames": rec.delivered, "p50": p50, "p95": p95, "p99": p99}
    primary = view or "record"
    latency = state.trackers[primary].latency_s if primary in state.trackers else pipe["record"].latency_s
    frames = views[primary]["frames"]
    thirds = [percentiles_ms(part, (95,))[0] for part in np.array_split(np.asarray(latency), 3)] if len(latency) >= 3 \
        else [views[primary]["p95"]] * 3
    stats.update(frames=int(frames), fps=round(frames / wall_s, 3) if wall_s > 0 else 0.0,
                 latency_ms={k: views[primary][k] for k in ("p50", "p95", "p99")})
    display = next((s for s in pipe.stages if s.name == "display"), None)
    stats["live"] = {
        "view": primary,
        "views": views,
        "source": source.info.name,
        "mode": "stream" if source.stream else "realtime" if source.paced else "every-frame",
        "captured": pipe["decode"].count,
        "queue_drops": {q.name: q.drops for q in pipe.queues if q.drops},
        "late_frames": source.late,
        "undecodable": source.skipped,
        "reconnects": source.reconnects,
        "paused_frames": display.paused_frames if display is not None else 0,
        "latency_p95_ms_by_third": thirds,
        "exit": state.quit_reason or (f"stage {pipe.error[0].name} failed" if pipe.error is not None
                                      else "source lost" if source.error is not None else "end of source"),
    }
    failed = pipe.error is not None or source.error is not None       # `run --stats`'s words for the end
    stats["exit"] = ("failed" if failed else {"SIGINT": "interrupted", "SIGTERM": "terminated"}.get(state.quit_reason,
                                                                                                  "done"))
    return stats
