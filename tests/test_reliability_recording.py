"""Issue 7, recording: a player killed with SIGKILL mid-recording (ffmpeg too) leaves a trace that parses,
whose last flush was under 1 s before the kill, and a playable mp4 missing at most about a second."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio

from world_model.trace import load

ROOT = Path(__file__).resolve().parents[1]


def test_sigkill_mid_recording_loses_at_most_a_second_and_leaves_valid_files(tmp_path):
    rec = tmp_path / "rec"
    (tmp_path / "p.yaml").write_text(f"backend: game\nrecord: {{dir: {rec}}}\n")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    p = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "play", "--headless", "--ticks", "100000", "--record",
                          "--settings", str(tmp_path / "p.yaml")], cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = None
    try:
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            parts = list(rec.glob("*.part.trace.jsonl")) if rec.exists() else []
            if parts and t0 is None:
                t0 = time.time()                           # the recording has started (header flushed)
            if t0 is not None and time.time() - t0 > 3.3:  # mid-recording, at no particular flush phase
                break
            time.sleep(0.02)
        assert t0 is not None and p.poll() is None, p.stderr.read().decode() if p.poll() is not None else "no recording"
        killed = time.time()
        os.killpg(p.pid, signal.SIGKILL)                   # the player and its ffmpeg child: nothing gets to finish
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    (trace_part,) = rec.glob("*.part.trace.jsonl")
    (video_part,) = rec.glob("*.part.mp4")
    assert not [f for f in rec.iterdir() if ".part" not in f.name]     # nothing ever got a final name half-written
    since_flush = killed - trace_part.stat().st_mtime
    trace = load(trace_part)                                            # every line whole and valid
    recorded = len(trace.actions) - trace.extra["video_start"]          # ticks recorded since the recording began
    assert since_flush < 1.0, since_flush                               # at most 1 s of ticks not on disk
    assert recorded >= 0.8 * 35 * (trace_part.stat().st_mtime - t0) - 5  # written incrementally all along
    frames = iio.imread(video_part)                                     # the fragmented mp4 plays
    assert frames.shape[1:] == (120, 160, 3) and frames.shape[0] >= recorded - 35, (frames.shape, recorded)
