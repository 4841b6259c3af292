"""Video in and out for the realtime demo: a file, camera or stream source, an atomically written video,
an OpenCV window where a GUI exists."""

from __future__ import annotations

import os
import re
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..errors import DemoError, first_line
from ..files import shown

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".avi", ".mkv")
DEFAULT_FPS = 30.0
STREAM_TIMEOUT_MS = 10_000  # open/read timeout of network streams, so a dead URL fails instead of hanging
WINDOW_NAME = "trt_yolact demo"


def _redact(url: str) -> str:
    """A stream URL without its password, for messages."""
    return re.sub(r"(://[^/:@]*):[^/@]*@", r"\1:***@", url)


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
    def open(cls, source: str | int | os.PathLike) -> VideoSource:
        text = str(source)
        if not text:
            raise DemoError("the source is empty: give a video file, a camera index or a stream URL")
        opencv_name(text, "source")
        if isinstance(source, int) or re.fullmatch(r"\d+", text):
            index = int(text)
            name = f"camera {index}"
            capture = cv2.VideoCapture(index)
            problem = f"cannot open {name} (no such camera, or it is busy)"
            kind = "camera"
        elif "://" in text:
            name = _redact(text)
            params = [
                cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
                cv2.CAP_PROP_READ_TIMEOUT_MSEC,
                STREAM_TIMEOUT_MS,
            ]
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


def opencv_name(path: str | os.PathLike, role: str) -> str:
    """``path`` as OpenCV takes it. A name that is not valid UTF-8 (undecodable bytes, as Linux allows)
    crashes OpenCV's video backends, so it is refused here, shown with those bytes escaped."""
    text = os.fspath(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise DemoError(f"{role} {shown(text)} is not a UTF-8 name, which OpenCV cannot open: rename it") from None
    return text


class VideoOutput:
    """An mp4v video written to a temporary file beside ``path`` and renamed into place by :meth:`finish`."""

    def __init__(self, path: str | os.PathLike, fps: float, size: tuple[int, int]):
        self.path = Path(opencv_name(path, "output"))
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
        self.tmp = (
            self.path.parent / f".{self.path.stem}.{os.getpid()}-{secrets.token_hex(3)}.partial{self.path.suffix}"
        )
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
    def open(cls, frame: np.ndarray) -> Display | None:
        if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            print("notice: no display available (DISPLAY is not set); running headless", file=sys.stderr)
            return None
        try:  # opencv-python-headless has no GUI: imshow raises cv2.error
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
            cv2.imshow(WINDOW_NAME, frame)
            cv2.waitKey(1)
        except cv2.error as exc:
            reason = str(getattr(exc, "err", "") or first_line(exc)).split(". ")[0].rstrip(".")
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
