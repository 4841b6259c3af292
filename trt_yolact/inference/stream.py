"""The realtime demo's threaded pipeline: capture -> batch -> predict -> render -> write/display.

A capture thread reads frames into a bounded queue; an inference thread takes up to ``batch`` frames at a
time, runs the predictor and numbers the frames; a render thread draws masks, boxes, labels, scores and a
smoothed end-to-end FPS; the main thread writes the video and shows the window. Every queue is bounded, so a
slow stage holds back the ones before it (file sources) or stale frames are skipped (live sources: cameras
and streams, where waiting would only add latency). Ctrl-C or SIGTERM stops capture and finishes the frames in flight
(press it again to drop them); the output video is written to a temporary file and renamed once complete,
so it is always playable.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DemoError, first_line
from ..structures import Detections
from .device_pipeline import one_size
from .predictor import InFlight, Predictor, StageTimes
from .video_io import Display, VideoOutput, VideoSource
from .visualize import draw_detections

DRAIN_TIMEOUT_S = 10.0  # after a stop request, frames in flight still unfinished by then are dropped
JOIN_TIMEOUT_S = 5.0
POLL_S = 0.1  # how often blocked queue operations look at the stop/abort flags

_END = object()  # end of stream, passed down the queues


class PipelineError(RuntimeError):
    """A pipeline thread failed; the message names the stage and the cause in one line."""


@dataclass
class DemoStats:
    """What a demo run did. Stage times are summed seconds; :meth:`stage_ms` gives the per-frame mean."""

    frames_read: int = 0
    frames_written: int = 0  # frames that left the pipeline: written to the output and/or shown
    frames_dropped: int = 0  # live sources only: stale frames skipped while inference was busy
    batches: int = 0
    seconds: float = 0.0  # from the start of the pipeline to the last frame out
    latency_seconds: float = 0.0  # summed capture -> written time of the frames written
    stage_seconds: dict[str, float] = field(default_factory=dict)
    end_reason: str = ""  # "end of stream", "max frames", "interrupted", "terminated", "window closed"
    interrupted: bool = False  # Ctrl-C, SIGTERM or stop_event (exit code 130)
    terminated: bool = False  # SIGTERM (exit code 143)
    output: Path | None = None  # the finished video, None without --out or when no frame was written
    displayed: bool = False

    @property
    def fps(self) -> float:
        return self.frames_written / self.seconds if self.seconds > 0 else 0.0

    def stage_ms(self) -> dict[str, float]:
        frames = max(self.frames_written, 1)
        return {name: 1000 * seconds / frames for name, seconds in self.stage_seconds.items()}

    def summary(self) -> str:
        where = f" to {self.output}" if self.output else ""
        dropped = f", {self.frames_dropped} dropped" if self.frames_dropped else ""
        latency = 1000 * self.latency_seconds / max(self.frames_written, 1)
        stages = ", ".join(f"{name} {ms:.1f}" for name, ms in self.stage_ms().items())
        return (
            f"{self.end_reason or 'stopped'}: {self.frames_read} frames read, {self.frames_written} written{where}"
            f"{dropped}; {self.fps:.1f} FPS end to end over {self.seconds:.2f} s, latency {latency:.0f} ms\n"
            f"per frame (ms): {stages}"
        )


@dataclass
class FpsMeter:
    """Smoothed output rate. Frames of a batch finish together, so the rate is measured over windows of at
    least ``window_s`` and smoothed exponentially; the first window reports the running mean."""

    window_s: float = 0.5
    smoothing: float = 0.3
    fps: float | None = None
    _start: float = field(default=0.0, init=False, repr=False)
    _count: int = field(default=0, init=False, repr=False)
    _settled: bool = field(default=False, init=False, repr=False)

    def start(self, now: float) -> None:
        self._start, self._count = now, 0

    def tick(self, now: float) -> float | None:
        self._count += 1
        span = now - self._start
        if span <= 0:
            return self.fps
        rate = self._count / span
        if span >= self.window_s:
            self.fps = rate if not self._settled else (1 - self.smoothing) * self.fps + self.smoothing * rate
            self._settled = True
            self._start, self._count = now, 0
        elif not self._settled:
            self.fps = rate
        return self.fps


@dataclass
class _Frame:
    index: int  # position in the source
    image: np.ndarray
    read_at: float


@dataclass
class _Item:
    seq: int  # consecutive output order, given at inference (live sources may skip source frames)
    frame: _Frame
    detections: Detections | None  # dropped once rendered: full-size masks are the bulk of the memory
    canvas: np.ndarray | None = None


class _Pipeline:
    def __init__(
        self,
        predictor: Predictor,
        source: VideoSource,
        batch: int,
        max_frames: int | None,
        stop_event: threading.Event,
        stats: DemoStats,
    ):
        self.predictor, self.source, self.batch, self.max_frames = predictor, source, batch, max_frames
        self.stop = stop_event  # stop reading; what is in flight is finished
        self.abort = threading.Event()  # quit now, dropping what is in flight
        self.stats = stats
        self.failures: list[tuple[str, BaseException]] = []
        self.seconds = {"read": 0.0, "predict": 0.0, "render": 0.0, "write": 0.0}  # each summed by one thread
        self._lock = threading.RLock()  # reentrant: the SIGINT handler runs in the main thread
        self.class_names = tuple(predictor.config.class_names)
        # Bounded queues: at most a few batches in flight between any two stages.
        self.frames: queue.Queue = queue.Queue(maxsize=2 * batch)
        self.results: queue.Queue = queue.Queue(maxsize=2 * batch)
        self.rendered: queue.Queue = queue.Queue(maxsize=batch + 2)
        self.meter = FpsMeter()
        self.started_at = time.perf_counter()
        self.threads = [
            threading.Thread(target=self._guard, args=(name, fn), name=f"demo-{name}", daemon=True)
            for name, fn in (("capture", self._capture), ("inference", self._infer), ("render", self._render))
        ]

    def set_end(self, reason: str) -> bool:
        """Record why the run ends; the first reason wins. True when this one did."""
        with self._lock:
            if self.stats.end_reason:
                return False
            self.stats.end_reason = reason
            return True

    def start(self) -> None:
        self.started_at = time.perf_counter()
        self.meter.start(self.started_at)
        for thread in self.threads:
            thread.start()

    def join(self) -> list[str]:
        """Join every thread (aborting what is left); the names of any that would not stop."""
        if any(t.is_alive() for t in self.threads):
            self.abort.set()
        stuck = []
        for thread in self.threads:
            if thread.ident is None:  # never started
                continue
            thread.join(JOIN_TIMEOUT_S)
            if thread.is_alive():  # e.g. a camera read that never returns; daemon, so it cannot hold the exit
                stuck.append(thread.name)
        return stuck

    # ---- queue helpers: block with backpressure, but never past an abort
    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self.abort.is_set():
            try:
                q.put(item, timeout=POLL_S)
                return True
            except queue.Full:
                pass
        return False

    def _get(self, q: queue.Queue) -> Any:
        """The next item; None after an abort."""
        while not self.abort.is_set():
            try:
                return q.get(timeout=POLL_S)
            except queue.Empty:
                pass
        return None

    def _guard(self, stage: str, work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread, which reports it
            self.failures.append((stage, exc))
            self.abort.set()

    # ---- stages
    def _capture(self) -> None:
        capture, clock = self.source.capture, time.perf_counter
        try:
            frame: np.ndarray | None = self.source.first_frame
            index = 0
            while frame is not None:
                if self.stop.is_set():
                    if self.set_end("interrupted"):
                        self.stats.interrupted = True
                    break
                item = _Frame(index, frame, clock())
                if self.source.live:
                    self._put_latest(item)
                elif not self._put(self.frames, item):
                    return
                self.stats.frames_read += 1
                index += 1
                if self.max_frames is not None and index >= self.max_frames:
                    self.set_end("max frames")
                    break
                start = clock()
                ok, frame = capture.read()
                self.seconds["read"] += clock() - start
                if not ok:
                    frame = None
                    self.set_end("end of stream")
        finally:
            capture.release()
        self._put(self.frames, _END)

    def _put_latest(self, item: _Frame) -> None:
        """Live sources: when inference lags, drop the oldest waiting frame rather than the camera's next."""
        while not self.abort.is_set():
            try:
                self.frames.put_nowait(item)
                return
            except queue.Full:
                try:
                    self.frames.get_nowait()
                    self.stats.frames_dropped += 1
                except queue.Empty:
                    pass

    def _next_batch(self) -> tuple[list[_Frame], bool] | None:
        """Up to ``batch`` frames (fewer at the end, or from a live source that has no more yet) and whether
        the stream ended after them; None after an abort."""
        frames: list[_Frame] = []
        while len(frames) < self.batch:
            if frames and self.source.live:  # never wait for a full batch of a live source: latency
                try:
                    item = self.frames.get_nowait()
                except queue.Empty:
                    break
            else:
                item = self._get(self.frames)
                if item is None:
                    return None
            if item is _END:
                return frames, True
            frames.append(item)
        return frames, False

    def _emit(self, frames: list[_Frame], detections: list[Detections], seq: int) -> int | None:
        """Hand a batch's frames and detections to rendering, numbered from ``seq``; the next number, or
        None after an abort."""
        self.stats.batches += 1
        if len(detections) != len(frames):
            raise RuntimeError(f"the predictor returned {len(detections)} results for {len(frames)} frames")
        for frame, dets in zip(frames, detections):
            if not self._put(self.results, _Item(seq, frame, dets)):
                return None
            seq += 1
        return seq

    def _infer(self) -> None:
        """Batches through the predictor, in order. With a device pipeline (static or graph) a batch is only
        launched, and finished after the next batch's upload has been queued: on CUDA that copy overlaps this
        batch's inference (on the CPU the same steps run one after another)."""
        clock, predictor, seq = time.perf_counter, self.predictor, 0
        in_flight: tuple[list[_Frame], InFlight] | None = None
        with torch.inference_mode():  # grad mode is per thread
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                frames, ended = batch
                start = clock()
                images = [f.image for f in frames]
                upload = predictor.upload(images) if frames and self._overlaps(images) else None
                if in_flight is not None:
                    done, in_flight = in_flight, None
                    detections = predictor.finish(done[1]).detections
                    self.seconds["predict"] += clock() - start
                    seq = self._emit(done[0], detections, seq)
                    if seq is None:
                        return
                    start = clock()
                if upload is not None:
                    in_flight = (frames, predictor.launch(upload, synchronize=False))
                    self.seconds["predict"] += clock() - start
                elif frames:
                    detections = predictor(images)
                    self.seconds["predict"] += clock() - start
                    seq = self._emit(frames, detections, seq)
                    if seq is None:
                        return
                if ended:
                    break
            if in_flight is not None:
                start = clock()
                detections = predictor.finish(in_flight[1]).detections
                self.seconds["predict"] += clock() - start
                if self._emit(in_flight[0], detections, seq) is None:
                    return
        self._put(self.results, _END)

    def _overlaps(self, images: list[np.ndarray]) -> bool:
        """Whether this batch takes the overlapped device path: a static pipeline and frames of one size."""
        return self.predictor.pipeline != "dynamic" and one_size(images)

    def _render(self) -> None:
        clock = time.perf_counter
        while True:
            item = self._get(self.results)
            if item is None:
                return
            if item is _END:
                break
            start = clock()
            fps = self.meter.tick(start)
            item.canvas = draw_detections(item.frame.image, item.detections, self.class_names, fps=fps)
            item.detections = None
            self.seconds["render"] += clock() - start
            if not self._put(self.rendered, item):
                return
        self._put(self.rendered, _END)


def run_demo(
    predictor: Predictor,
    source: str | int | os.PathLike | VideoSource,
    out: str | os.PathLike | None = None,
    batch: int = 1,
    display: bool = False,
    max_frames: int | None = None,
    stop_event: threading.Event | None = None,
    progress: bool = False,
) -> DemoStats:
    """Run the threaded demo until the source ends, ``max_frames`` are read, ``stop_event`` is set or
    Ctrl-C or SIGTERM (handled while this runs in the main thread: the first stops and finishes the frames
    in flight, a second drops them). Returns the stats; ``stats.interrupted`` after a stop request.

    Raises :class:`DemoError` for an unreadable source or unwritable output (before any thread starts) and
    :class:`PipelineError` when a stage fails (threads joined, partial output removed).
    """
    if batch < 1:
        raise DemoError(f"batch must be at least 1, got {batch}")
    if max_frames is not None and max_frames < 1:
        raise DemoError(f"max_frames must be at least 1, got {max_frames}")
    video = source if isinstance(source, VideoSource) else VideoSource.open(source)
    output = _open_output(video, out)
    stats = DemoStats()
    window = Display.open(video.first_frame) if display else None
    stats.displayed = window is not None
    pipeline = _Pipeline(predictor, video, batch, max_frames, stop_event or threading.Event(), stats)
    times_before = replace(predictor.times)  # the predictor's own timings so far: the run's share splits 'predict'
    completed = False
    with _signals_stop(pipeline) as sigints:
        try:
            pipeline.start()
            try:
                _consume(pipeline, output, window, stats, progress, sigints)
            except Exception as exc:  # noqa: BLE001 - the writer's failure is reported like a worker's
                pipeline.failures.append(("output", exc))
            completed = True
        finally:
            stuck = _finish(pipeline, output, window, completed)
    if pipeline.failures:
        stage, exc = pipeline.failures[0]
        raise PipelineError(f"{stage} failed: {type(exc).__name__}: {first_line(exc)}") from exc
    if stuck:
        print(f"notice: {', '.join(stuck)} did not stop in time and was abandoned", file=sys.stderr)
    if stats.frames_written == 0:
        stats.seconds = time.perf_counter() - pipeline.started_at
    stats.end_reason = stats.end_reason or "stopped"
    stats.stage_seconds = _stage_breakdown(pipeline.seconds, predictor.times, times_before)
    return stats


def _open_output(video: VideoSource, out: str | os.PathLike | None) -> VideoOutput | None:
    """The output video (None without ``out``); on a bad output the source is released before raising."""
    try:
        if out is not None and video.path is not None and Path(out).resolve() == video.path.resolve():
            raise DemoError(f"output {out} is the source video")
        height, width = video.first_frame.shape[:2]
        return VideoOutput(out, video.fps, (width, height)) if out is not None else None
    except BaseException:
        video.capture.release()
        raise


@contextmanager
def _signals_stop(pipeline: _Pipeline) -> Iterator[Callable[[], int]]:
    """While inside, Ctrl-C (SIGINT) or SIGTERM (``timeout``, ``docker stop``, systemd) stops the pipeline and
    the frames in flight are finished; a second signal aborts them. Yields how many signals came. Handlers only
    work in the main thread: elsewhere signals are left alone."""
    count = 0

    def on_signal(signum: int, frame: Any) -> None:
        # Only flags here: printing from a signal handler can collide with a print in progress.
        nonlocal count
        count += 1
        pipeline.stats.interrupted = True
        pipeline.stats.terminated |= signum == signal.SIGTERM
        pipeline.set_end("terminated" if signum == signal.SIGTERM else "interrupted")
        pipeline.stop.set()
        if count > 1:
            pipeline.abort.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: count
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _finish(pipeline: _Pipeline, output: VideoOutput | None, window: Display | None, completed: bool) -> list[str]:
    """Join the threads, close the window, and keep the video only when the run completed without a
    failure (end of stream or a stop); returns the names of threads that would not stop."""
    stuck = pipeline.join()
    if window is not None:
        window.close()
    if output is not None:
        if completed and not pipeline.failures:
            pipeline.stats.output = output.finish()
        else:
            output.discard()
    return stuck


def _stage_breakdown(seconds: dict[str, float], times: StageTimes, before: StageTimes) -> dict[str, float]:
    """Stage seconds in pipeline order, the predictor's timings of this run splitting 'predict'."""
    return {
        "read": seconds["read"],
        "preprocess": times.preprocess - before.preprocess,
        "inference": times.inference - before.inference,
        "postprocess": times.postprocess - before.postprocess,
        "render": seconds["render"],
        "write": seconds["write"],
    }


def _stop_notice(signals: int, terminated: bool) -> str:
    """What a stop signal does now. SIGTERM comes from a supervisor (timeout, docker stop), not a keyboard:
    then there is no talk of Ctrl-C."""
    cause, again = ("terminated", "send it again") if terminated else ("interrupted", "Ctrl-C again")
    if signals == 1:
        return f"{cause}: finishing the frames in flight ({again} to drop them)"
    return f"{cause}: dropping the frames in flight"


def _consume(
    pipeline: _Pipeline,
    output: VideoOutput | None,
    window: Display | None,
    stats: DemoStats,
    progress: bool,
    sigints: Callable[[], int],
) -> None:
    """Main-thread sink: write and show the rendered frames in sequence order until the end or a stop."""
    clock = time.perf_counter
    interactive = progress and sys.stderr.isatty()
    next_seq, next_report, drain_deadline, told = 0, 0.0, None, 0
    while True:
        if progress and sigints() > told:
            told = sigints()
            print(f"\nnotice: {_stop_notice(told, stats.terminated)}", file=sys.stderr)
        if pipeline.failures or pipeline.abort.is_set():
            break
        if pipeline.stop.is_set() and drain_deadline is None:
            drain_deadline = clock() + DRAIN_TIMEOUT_S
        if drain_deadline is not None and clock() > drain_deadline:
            pipeline.abort.set()
            print("\nnotice: frames in flight did not finish in time and were dropped", file=sys.stderr)
            break
        try:
            item = pipeline.rendered.get(timeout=POLL_S)
        except queue.Empty:
            continue
        if item is _END:
            break
        if item.seq != next_seq:  # one thread per stage keeps the order; this guards that invariant
            raise RuntimeError(f"frame {item.seq} arrived before frame {next_seq}")
        next_seq += 1
        start = clock()
        if output is not None:
            output.write(item.canvas)
        if window is not None and not window.show(item.canvas):
            window = None  # closed by the user: finish the video without showing
            pipeline.set_end("window closed")
            pipeline.stop.set()
        now = clock()
        pipeline.seconds["write"] += now - start
        stats.frames_written += 1
        stats.latency_seconds += now - item.frame.read_at
        stats.seconds = now - pipeline.started_at
        if progress and (stats.frames_written == 1 or now >= next_report):
            line = f"progress: {stats.frames_written} frames, {pipeline.meter.fps or 0.0:.1f} FPS"
            print(f"\r{line}" if interactive else line, end="" if interactive else "\n", file=sys.stderr, flush=True)
            next_report = now + (0.5 if interactive else 5.0)
    if interactive:
        print(file=sys.stderr)
