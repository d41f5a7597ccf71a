"""The same batch on a Ray cluster: ``run_cluster(jobs, settings, address)``.

``ray.init(address)``: ``auto`` (the cluster this machine belongs to), a head address
(``ray://head:10001`` or ``head:6379``), or None for a local cluster on this machine. A test (or a
caller) that has already called ``ray.init`` keeps its cluster; the one we start, we shut down.

One actor per GPU in the cluster (each holds 1 GPU and its share of its node's CPUs, for decode and
encode), or on a CPU-only cluster one per CPU. ``--workers N`` asks for N actors instead: above the GPU
count they share GPUs (num_gpus 0.5, 0.25 ...), which pays when one pipeline cannot keep a GPU busy
(decode and encode run on the CPU, and one process's Python stages share one interpreter lock). Each actor
is a ``pipeline.batch.Worker``: it builds the engine once and runs the segpipe pipeline on each file
the driver hands it; files go to actors as they free up. A failed file is retried once on whichever
actor is free next; an actor that dies is replaced, and its file counts as a failed attempt. The
progress bar counts files, with the frames delivered across the cluster (polled from the actors) in
its postfix. The summary is ``pipeline.batch.summarise``'s, with mode "ray".

Inputs and outputs are paths every node can see (a shared filesystem, e.g. NFS or a bucket mounted
with s3fs/gcsfuse) or, for inputs, URLs; segpipe must be installed on every node
(``pip install 'segpipe[ray]'``), or shipped with ``ray.init(runtime_env=...)``.
"""
from __future__ import annotations

import logging
import socket
import time

from pipeline.batch import Job, Tally, Worker, failed_record, uses_gpu_backend, worker_settings
from train.errors import ClusterUnavailableError, InvalidInputError, MissingExtraError

log = logging.getLogger("segpipe.cluster")

INSTALL_HINT = "pip install 'segpipe[ray]'"
POLL_S = 1.0                 # how often the driver asks the actors how many frames they have done


def import_ray():
    try:
        import ray
    except ImportError:
        raise MissingExtraError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def plan_actors(resources: dict, nodes: list[dict], settings, workers: int | None) -> tuple[int, dict, int]:
    """(number of actors, their Ray resource options, threads each) for this cluster."""
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    node_cpus = [int(n["Resources"].get("CPU", 0)) for n in nodes if n.get("Alive")] or [cpus]
    if gpus and uses_gpu_backend(settings):
        n = workers or gpus
        share = min(1.0, gpus / n)          # --workers above the GPU count: actors share GPUs (0.5 each ...)
        cpus_per_gpu = min((n_["Resources"].get("CPU", 0) / n_["Resources"]["GPU"]
                            for n_ in nodes if n_.get("Alive") and n_["Resources"].get("GPU")), default=1)
        per = max(1, int(cpus_per_gpu * share))
        return n, {"num_gpus": share, "num_cpus": per}, per
    n = workers or cpus
    per = max(1, min(cpus // n, max(node_cpus)))
    return n, {"num_cpus": per}, per



def run_cluster(jobs: list[Job], settings, address: str | None = None, workers: int | None = None, *,
                progress: bool = False) -> dict:
    """Segment ``jobs`` on Ray actors; return the summary (mode "ray")."""
    ray = import_ray()
    if workers is not None and workers < 1:
        raise InvalidInputError(f"--workers {workers} must be >= 1")
    started = not ray.is_initialized()
    if started:
        connect(ray, address)
    try:
        return _drive(ray, jobs, settings, workers, progress)
    finally:
        if started:
            ray.shutdown()


def connect(ray, address: str | None) -> None:
    """``ray.init``; where no cluster answers, one line at once (Ray itself would retry for minutes)."""
    fix = "start one with `ray start --head` (--ray auto finds it), or pass --ray alone for a local cluster"
    host, _, port = (address or "").removeprefix("ray://").rpartition(":")
    if port.isdigit():
        try:
            socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as e:
            raise ClusterUnavailableError(f"no Ray cluster answers at {address} ({e.strerror or e}): {fix}") from None
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    except ConnectionError as e:
        where = "running on this machine or in RAY_ADDRESS" if address == "auto" else f"at {address}"
        raise ClusterUnavailableError(f"no Ray cluster {where}: {fix}") from e


def _drive(ray, jobs, settings, workers, progress) -> dict:
    from ray.exceptions import GetTimeoutError, RayActorError, RayError

    count, options, threads = plan_actors(ray.cluster_resources(), ray.nodes(), settings, workers)
    count = min(count, len(jobs))
    gpu = "num_gpus" in options
    actor_settings = worker_settings(settings, threads, device="cuda" if gpu else None)
    Actor = ray.remote(max_concurrency=2, **options)(Worker)      # 2: process() and frames() at once

    def start(i):
        return Actor.remote(actor_settings, name=f"ray-{i}")

    log.info("%d files on %d Ray actors (%s each)", len(jobs), count,
             ", ".join(f"{k.removeprefix('num_')} {v}" for k, v in options.items()))
    actors = [start(i) for i in range(count)]
    idle = list(range(count))
    inflight: dict = {}                  # object ref -> (actor slot, job, attempt)
    tally = Tally(jobs, progress=progress, mode="ray", workers=count)
    frames_by_actor: dict[int, int] = {}
    last_poll = 0.0
    try:
        while tally.busy or inflight:
            while tally.busy and idle:
                slot = idle.pop(0)
                job, attempt = tally.next()
                inflight[actors[slot].process.remote(job, attempt)] = (slot, job, attempt)
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                slot, job, attempt = inflight.pop(ref)
                try:
                    record = ray.get(ref)
                except RayActorError as e:       # the actor (or its node) died: replace it
                    record = failed_record(job, attempt, f"its Ray actor died ({type(e).__name__})", f"ray-{slot}")
                    ray.kill(actors[slot], no_restart=True)
                    actors[slot] = start(slot)
                    frames_by_actor.pop(slot, None)
                except RayError as e:
                    record = failed_record(job, attempt, f"{type(e).__name__}: {str(e).splitlines()[0]}",
                                           f"ray-{slot}")
                idle.append(slot)
                tally.finish(job, attempt, record)
            if progress and time.monotonic() - last_poll > POLL_S:
                last_poll = time.monotonic()
                busy = sorted({slot for slot, _, _ in inflight.values()})
                try:
                    counts = ray.get([actors[s].frames.remote() for s in busy], timeout=POLL_S)
                    frames_by_actor.update(zip(busy, counts))
                except (GetTimeoutError, RayError):
                    pass
                tally.live(sum(frames_by_actor.values()))
    finally:
        tally.close()
        for actor in actors:
            ray.kill(actor)
    return tally.summary()
