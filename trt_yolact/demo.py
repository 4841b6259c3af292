"""Live instance segmentation on a video file, a camera or a stream, with a threaded pipeline.

    python -m trt_yolact.demo --source FILE|CAMERA_INDEX|RTSP_URL [--weights CKPT | --onnx FILE | --engine FILE]
        [--config NAME_OR_FILE] [--backend torch|onnxruntime|tensorrt] [--device cpu|cuda] [--out out.mp4]
        [--batch N] [--no-display] [--score-threshold T] [--max-frames N]

Pipeline: a capture thread reads frames into a bounded queue; an inference thread takes up to ``--batch``
frames at a time, runs preprocess + model + post-processing and numbers the frames; a render thread draws
masks, boxes, labels, scores and a smoothed end-to-end FPS; the main thread writes the video and shows the
window. Every queue is bounded, so a slow stage holds back the ones before it (file sources) or stale
frames are skipped (live sources: cameras and streams, where waiting would only add latency).

Ctrl-C stops capture and finishes the frames in flight (press it again to drop them); the output video is
written to a temporary file beside ``--out`` and renamed once complete, so it is always playable. Exit
codes: 0 at the end of the stream, 130 after Ctrl-C, 2 for bad input, 1 when the pipeline fails.
The demo's score threshold defaults to 0.3 (predict's to 0).
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .errors import first_line as _first_line
from .postprocess import Detections, PostprocessConfig
from .predict import Predictor, add_model_arguments

BACKENDS = ("torch", "onnxruntime", "tensorrt")
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")
DEFAULT_FPS = 30.0
STREAM_TIMEOUT_MS = 10_000  # open/read timeout of network streams, so a dead URL fails instead of hanging
DRAIN_TIMEOUT_S = 10.0  # after a stop request, frames in flight still unfinished by then are dropped
JOIN_TIMEOUT_S = 5.0
POLL_S = 0.1  # how often blocked queue operations look at the stop/abort flags
WINDOW_NAME = "trt_yolact demo"

_END = object()  # end of stream, passed down the queues


class DemoError(ValueError):
    """Input the demo cannot work with: an unreadable source, an unwritable output, bad arguments."""


class PipelineError(RuntimeError):
    """A pipeline thread failed; the message names the stage and the cause in one line."""


def _redact(url: str) -> str:
    """A stream URL without its password, for messages."""
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", url)


# --------------------------------------------------------------------------------------------- stats
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
    end_reason: str = ""  # "end of stream", "max frames", "interrupted", "window closed"
    interrupted: bool = False  # Ctrl-C or stop_event (exit code 130)
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


# -------------------------------------------------------------------------------------- source, output
@dataclass
class VideoSource:
    """An opened source whose first frame has been read (so that a bad source fails before any thread)."""

    capture: cv2.VideoCapture
    first_frame: np.ndarray
    fps: float
    live: bool  # camera or stream: frames come in real time, stale ones may be skipped
    name: str  # for messages (stream passwords hidden)
    path: Path | None = None  # for a file source

    @classmethod
    def open(cls, source: str | int | os.PathLike) -> "VideoSource":
        text = str(source)
        if isinstance(source, int) or re.fullmatch(r"\d+", text):
            index = int(text)
            name = f"camera {index}"
            capture = cv2.VideoCapture(index)
            problem = f"cannot open {name} (no such camera, or it is busy)"
            kind = "camera"
        elif "://" in text:
            name = _redact(text)
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, STREAM_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, STREAM_TIMEOUT_MS]
            capture = cv2.VideoCapture(text, cv2.CAP_ANY, params)
            problem = f"cannot open stream {name} (unreachable, or not a video stream)"
            kind = "stream"
        else:
            path = Path(text)
            if not path.exists():
                raise DemoError(f"source {path} does not exist (give a video file, a camera index or a stream URL)")
            if not path.is_file():
                raise DemoError(f"source {path} is not a file")
            name = str(path)
            capture = cv2.VideoCapture(name)
            problem = f"cannot open {name} as a video (not a video file, or an unsupported format)"
            kind = "file"
        if not capture.isOpened():
            capture.release()
            raise DemoError(problem)
        ok, frame = capture.read()
        if not ok or frame is None or frame.ndim != 3 or frame.size == 0:
            capture.release()
            raise DemoError(f"cannot read a frame from {name}" + (" (empty or not a video)" if kind == "file" else ""))
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        if not 0 < fps <= 1000:  # cameras and streams often report 0 or nonsense
            fps = DEFAULT_FPS
        # A stream of unknown length is live; one with a frame count (an HTTP file) is read like a file.
        live = kind == "camera" or (kind == "stream" and capture.get(cv2.CAP_PROP_FRAME_COUNT) <= 0)
        return cls(capture, frame, fps, live, name, Path(text) if kind == "file" else None)


class VideoOutput:
    """An mp4v video written to a temporary file beside ``path`` and renamed into place by :meth:`finish`."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        self.size = size  # (width, height) of the first frame; later frames are resized to it
        self.frames = 0
        if self.path.suffix.lower() not in VIDEO_SUFFIXES:
            raise DemoError(f"output {self.path} must be a video file name ending in {', '.join(VIDEO_SUFFIXES)}")
        if self.path.is_dir():
            raise DemoError(f"output {self.path} is a directory")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DemoError(f"cannot create the folder of output {self.path}: {exc.strerror or exc}") from None
        # Named, not created, here: the writer creates it, so it gets ordinary permissions. The suffix
        # stays last because FFmpeg picks the container from it.
        self.tmp = self.path.parent / f".{self.path.stem}.{os.getpid()}-{secrets.token_hex(3)}.partial{self.path.suffix}"
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if not self.writer.isOpened():
            self.writer.release()
            self.tmp.unlink(missing_ok=True)
            raise DemoError(f"cannot write video {self.path} (folder not writable, or no mp4v encoder)")

    def write(self, frame: np.ndarray) -> None:
        if (frame.shape[1], frame.shape[0]) != self.size:  # a stream may change resolution
            frame = cv2.resize(frame, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(frame)
        self.frames += 1

    def finish(self) -> Path | None:
        """Close and rename into place; with no frame written nothing is left (None)."""
        self.writer.release()
        if self.frames == 0:
            self.tmp.unlink(missing_ok=True)
            return None
        os.replace(self.tmp, self.path)
        return self.path

    def discard(self) -> None:
        self.writer.release()
        self.tmp.unlink(missing_ok=True)


class Display:
    """An OpenCV window; :meth:`open` returns None (with a one-line notice) where no GUI is available."""

    @classmethod
    def open(cls, frame: np.ndarray) -> "Display | None":
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            print("notice: no display available (DISPLAY is not set); running headless", file=sys.stderr)
            return None
        try:  # opencv-python-headless has no GUI: imshow raises cv2.error
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            cv2.imshow(WINDOW_NAME, frame)
            cv2.waitKey(1)
        except cv2.error as exc:
            reason = str(getattr(exc, "err", "") or _first_line(exc)).split(". ")[0].rstrip(".")
            print(f"notice: cannot open a window (OpenCV: {reason[:120]}); running headless", file=sys.stderr)
            return None
        return cls()

    def show(self, frame: np.ndarray) -> bool:
        """Show a frame; False once the user pressed q or Esc or closed the window."""
        try:
            cv2.imshow(WINDOW_NAME, frame)
            key = cv2.waitKey(1) & 0xFF
            return key not in (ord("q"), 27) and cv2.getWindowProperty(WINDOW_NAME, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:  # some GUI backends raise once the window is gone
            return False

    def close(self) -> None:
        try:
            cv2.destroyWindow(WINDOW_NAME)
            cv2.waitKey(1)
        except cv2.error:
            pass


# ------------------------------------------------------------------------------------------ pipeline
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
        config = getattr(predictor, "config", None)
        self.class_names = tuple(config.class_names) if config is not None else ()
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

    def _infer(self) -> None:
        clock, seq, ended = time.perf_counter, 0, False
        while not ended:
            first = self._get(self.frames)
            if first is None:
                return
            if first is _END:
                break
            frames = [first]
            while len(frames) < self.batch:
                if self.source.live:  # never wait for a full batch of a live source: latency
                    try:
                        item = self.frames.get_nowait()
                    except queue.Empty:
                        break
                else:
                    item = self._get(self.frames)
                    if item is None:
                        return
                if item is _END:
                    ended = True
                    break
                frames.append(item)
            start = clock()
            with torch.inference_mode():  # grad mode is per thread
                detections = self.predictor([f.image for f in frames])
            self.seconds["predict"] += clock() - start
            self.stats.batches += 1
            if len(detections) != len(frames):
                raise RuntimeError(f"the predictor returned {len(detections)} results for {len(frames)} frames")
            for frame, dets in zip(frames, detections):
                if not self._put(self.results, _Item(seq, frame, dets)):
                    return
                seq += 1
        self._put(self.results, _END)

    def _render(self) -> None:
        from .visualize import draw_detections

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


# ------------------------------------------------------------------------------------------- run_demo
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
    Ctrl-C (SIGINT, handled while this runs in the main thread: first stop and finish the frames in
    flight, second drop them). Returns the stats; ``stats.interrupted`` after a stop request.

    Raises :class:`DemoError` for an unreadable source or unwritable output (before any thread starts) and
    :class:`PipelineError` when a stage fails (threads joined, partial output removed).
    """
    if batch < 1:
        raise DemoError(f"batch must be at least 1, got {batch}")
    if max_frames is not None and max_frames < 1:
        raise DemoError(f"max_frames must be at least 1, got {max_frames}")
    video = source if isinstance(source, VideoSource) else VideoSource.open(source)
    stats = DemoStats()
    try:
        if out is not None and video.path is not None and Path(out).resolve() == video.path.resolve():
            raise DemoError(f"output {out} is the source video")
        height, width = video.first_frame.shape[:2]
        output = VideoOutput(out, video.fps, (width, height)) if out is not None else None
    except BaseException:
        video.capture.release()
        raise
    window = Display.open(video.first_frame) if display else None
    stats.displayed = window is not None
    pipeline = _Pipeline(predictor, video, batch, max_frames, stop_event or threading.Event(), stats)
    times = getattr(predictor, "times", None)
    times_before = (times.preprocess, times.inference, times.postprocess) if times is not None else None

    sigint_count = 0

    def on_sigint(signum: int, frame: Any) -> None:
        # Only flags here: printing from a signal handler can collide with a print in progress.
        nonlocal sigint_count
        sigint_count += 1
        stats.interrupted = True
        pipeline.set_end("interrupted")
        pipeline.stop.set()
        if sigint_count > 1:
            pipeline.abort.set()

    previous_handler = None
    if threading.current_thread() is threading.main_thread():
        previous_handler = signal.signal(signal.SIGINT, on_sigint)
    completed = False
    try:
        pipeline.start()
        try:
            _consume(pipeline, output, window, stats, progress, lambda: sigint_count)
        except Exception as exc:  # noqa: BLE001 - the writer's failure is reported like a worker's
            pipeline.failures.append(("output", exc))
        completed = True
    finally:
        stuck = pipeline.join()
        if window is not None:
            window.close()
        if output is not None:
            if completed and not pipeline.failures:  # end of stream or a stop: a complete video
                stats.output = output.finish()
            else:
                output.discard()
        if previous_handler is not None:
            signal.signal(signal.SIGINT, previous_handler)
    if pipeline.failures:
        stage, exc = pipeline.failures[0]
        raise PipelineError(f"{stage} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
    if stuck:
        print(f"notice: {', '.join(stuck)} did not stop in time and was abandoned", file=sys.stderr)
    if stats.frames_written == 0:
        stats.seconds = time.perf_counter() - pipeline.started_at
    stats.end_reason = stats.end_reason or "stopped"
    stats.stage_seconds = _stage_breakdown(pipeline.seconds, times, times_before)
    return stats


def _stage_breakdown(seconds: dict[str, float], times: Any, before: tuple[float, float, float] | None) -> dict[str, float]:
    """Stage seconds in pipeline order; the predictor's own timings (if it keeps them) split 'predict'."""
    if before is None:
        return dict(seconds)
    split = zip(("preprocess", "inference", "postprocess"), (times.preprocess, times.inference, times.postprocess), before)
    return {"read": seconds["read"], **{name: now - then for name, now, then in split},
            "render": seconds["render"], "write": seconds["write"]}  # fmt: skip


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
            what = "finishing the frames in flight (Ctrl-C again to drop them)" if told == 1 else "dropping the frames in flight"
            print(f"\nnotice: interrupted: {what}", file=sys.stderr)
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


# ----------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trt_yolact.demo",
        description=__doc__.splitlines()[0],
        epilog="Demo defaults: --batch 1, --score-threshold 0.3, --device cuda with --engine (else cpu). "
        "Ctrl-C stops and keeps a playable video; press it twice to drop the frames in flight.",
    )
    parser.add_argument("--source", required=True, help="video file, camera index (0) or stream URL (rtsp://...)")
    add_model_arguments(parser)
    parser.add_argument("--onnx", default=None, metavar="FILE", help="ONNX export to run with ONNX Runtime")
    parser.add_argument("--engine", default=None, metavar="FILE", help="TensorRT engine to run (needs a GPU)")
    parser.add_argument("--backend", choices=BACKENDS, default=None, help="default: from --engine/--onnx, else torch")
    # The demo's own name for --batch-size (same destination), with a latency-friendly default.
    parser.add_argument("--batch", dest="batch_size", type=int, metavar="N", help="frames per inference batch (default: 1)")
    parser.add_argument("--out", default=None, help="write the annotated video here (.mp4)")
    parser.add_argument("--no-display", action="store_true", help="do not open a window (automatic without a display)")
    parser.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop after reading N frames")
    parser.set_defaults(batch_size=1, score_threshold=0.3, device=None)
    return parser


def choose_backend(args: argparse.Namespace) -> str:
    if args.engine and args.onnx:
        raise DemoError("give either --engine or --onnx, not both")
    implied = "tensorrt" if args.engine else "onnxruntime" if args.onnx else None
    backend = args.backend or implied or "torch"
    if implied and backend != implied:
        raise DemoError(f"--{'engine' if args.engine else 'onnx'} runs with --backend {implied}, not {backend}")
    if backend == "tensorrt" and not args.engine:
        raise DemoError("--backend tensorrt needs --engine FILE")
    if backend == "onnxruntime" and not args.onnx:
        raise DemoError("--backend onnxruntime needs --onnx FILE")
    if backend != "torch" and args.weights:
        raise DemoError("--weights is for the torch backend; an ONNX file or engine holds its own weights")
    for flag, path in (("--engine", args.engine), ("--onnx", args.onnx)):
        if path and not Path(path).is_file():
            raise DemoError(f"{flag} file {path} does not exist")
    return backend


def build_predictor(args: argparse.Namespace, backend: str) -> Predictor:
    """The runner for ``backend`` (imported only when asked for), its config and the post-processing."""
    from .backends import BackendUnavailable, open_runner

    weights = args.engine or args.onnx or args.weights
    device = args.device or ("cuda" if backend == "tensorrt" else "cpu")
    try:
        runner, config = open_runner(weights, backend, "fp32", args.config, device)
    except ImportError as exc:
        raise DemoError(f"the {backend} backend is not available in this installation ({_first_line(exc)})") from None
    except BackendUnavailable as exc:
        raise DemoError(f"the {backend} backend is not available here: {_first_line(exc)}") from None
    except (RuntimeError, ValueError, OSError) as exc:  # RunnerError, CheckpointError, ConfigError
        raise DemoError(_first_line(exc)) from None
    return Predictor(runner, config, PostprocessConfig(score_threshold=args.score_threshold, max_detections=args.top_k))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # OpenCV's and FFmpeg's own warnings would repeat our one-line errors (set the variable to see them).
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    source: VideoSource | None = None
    try:
        if args.batch_size < 1 or args.top_k < 1 or (args.max_frames is not None and args.max_frames < 1):
            raise DemoError("--batch, --top-k and --max-frames must be at least 1")
        backend = choose_backend(args)
        source = VideoSource.open(args.source)
        predictor = build_predictor(args, backend)
        stats = run_demo(predictor, source, args.out, args.batch_size, not args.no_display, args.max_frames, progress=True)
    except DemoError as exc:
        if source is not None:
            source.capture.release()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before the pipeline runs (it handles Ctrl-C itself)
        print("\ninterrupted", file=sys.stderr)
        return 130
    if args.out and stats.output is None:
        print(f"notice: no frame was written, {args.out} was not created", file=sys.stderr)
    print(stats.summary())
    return 130 if stats.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
