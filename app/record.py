"""Recording: an mp4 of what was played plus a trace JSONL that replays it.

Both files are written incrementally under temporary names (`NAME.part.mp4`, `NAME.part.trace.jsonl`)
and renamed into place when the recording stops, so a final name never holds a half-written file.
The trace is flushed and fsynced at least every `FLUSH_S` seconds, in whole lines only. The mp4 is
fragmented with a keyframe every second, so even a killed process leaves a playable `.part.mp4` that
lacks at most its last second.

The trace holds every action since the last reset (the model's output depends on all of them) with
`context` = the ticks that seeded the model; `video_start` in the header is the index of the first
trace tick that the mp4 shows.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from world_model.actions import Action
from world_model.trace import Trace

FLUSH_S = 0.5


def video_writer(path: Path, fps: float, crf: int = 18, fragmented: bool = False):
    """An imageio-ffmpeg H.264 writer; macro_block_size=1 keeps 160x120 at 160x120 (platform.md)."""
    import imageio.v2 as iio

    params = ["-crf", str(crf), "-preset", "veryfast"]
    if fragmented:
        params += ["-g", str(max(1, round(fps))), "-movflags", "frag_keyframe+empty_moov+default_base_moof"]
    return iio.get_writer(str(path), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=None,
                          pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                          output_params=params)


class Recorder:
    def __init__(self, out_dir: Path, header: Trace, past: Iterable[Action], *, fps: float = 35.0, crf: int = 18,
                 name: str | None = None):
        out_dir.mkdir(parents=True, exist_ok=True)
        name = name or time.strftime("dreamloop-%Y%m%d-%H%M%S")
        self.video_path = out_dir / f"{name}.mp4"
        self.trace_path = out_dir / f"{name}.trace.jsonl"
        self._video_tmp = out_dir / f"{name}.part.mp4"
        self._trace_tmp = out_dir / f"{name}.part.trace.jsonl"
        self._video = video_writer(self._video_tmp, fps, crf, fragmented=True)
        self._trace = open(self._trace_tmp, "w", encoding="utf-8")
        lines = [json.dumps(header.header())] + [json.dumps(a.to_dict()) for a in past]
        self._pending: list[str] = [ln + "\n" for ln in lines]
        self.frames = 0
        self.started = time.perf_counter()
        self._flush()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def add(self, frame: np.ndarray, action: Action) -> None:
        self._video.append_data(frame)
        self._pending.append(json.dumps(action.to_dict()) + "\n")
        self.frames += 1
        if time.perf_counter() - self._last_flush >= FLUSH_S:
            self._flush()

    def _flush(self) -> None:
        self._trace.write("".join(self._pending))   # whole lines in one write
        self._pending.clear()
        self._trace.flush()
        os.fsync(self._trace.fileno())
        self._last_flush = time.perf_counter()

    def close(self) -> tuple[Path, Path]:
        """Finish both files and rename them into place. Returns (video, trace)."""
        self._flush()
        self._trace.close()
        self._video.close()
        os.replace(self._trace_tmp, self.trace_path)
        if self.frames:
            os.replace(self._video_tmp, self.video_path)
        else:
            self._video_tmp.unlink(missing_ok=True)
        return self.video_path, self.trace_path
