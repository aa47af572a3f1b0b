"""Videos: uint8 frames to an H.264 MP4 (yuv420p, what browsers and players open) with PyAV, FFmpeg inside its wheel."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from regress.store.files import write_atomic


def video_bytes(frames: np.ndarray, fps: int = 24, quality: int = 20) -> bytes:
    """Frames (F, H, W, 3) uint8 as MP4 bytes; odd sides are padded by one pixel (yuv420p needs even ones).
    `quality` is x264's constant rate factor (lower: better, larger)."""
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"a video is uint8 frames (F, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    frames = np.pad(frames, ((0, 0), (0, height - frames.shape[1]), (0, width - frames.shape[2]), (0, 0)), mode="edge")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": str(quality), "preset": "veryfast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def read_video(data: bytes | Path) -> np.ndarray:
    """A video's frames (F, H, W, 3) uint8."""
    import av

    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with av.open(source) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def write_video(path: Path, frames: np.ndarray, fps: int = 24) -> None:
    write_atomic(Path(path), video_bytes(frames, fps))
