"""A real pygame + OpenGL window: under SDL's offscreen driver (EGL, no X) and under Xvfb (x11), with an
external screenshot (xwd) checked for the game frame and the HUD.

Each case runs the player in a child process (this file with --child), because an SDL video driver is
chosen once per process.
"""
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
W, H = 640, 480
HUD_W = 440      # app.hud.PANEL_W; the HUD is drawn at (8, 8)


def child(out: Path, wait: bool) -> None:
    sys.path.insert(0, str(ROOT))
    import pygame

    from app.backends import GameBackend
    from app.config import PlayConfig, SessionConfig, WindowConfig
    from app.loop import new_state, run
    from app.window import Window
    from input.bindings import Bindings

    cfg = PlayConfig(backend="game", session=SessionConfig(context=2),
                     window=WindowConfig(width=W, height=H, filter="nearest", vsync=False, max_fps=60))
    window = Window(cfg.window)
    backend = GameBackend(cfg.game)
    state = new_state(cfg, backend, Bindings())
    pygame.event.post(pygame.event.Event(pygame.KEYDOWN, key=pygame.K_RIGHT, mod=0, unicode="", scancode=0))
    run(state, window, max_ticks=20)
    window.view.draw(window.size)
    shown = window.read()
    pygame.display.flip()
    hud_h = window.view.overlays["hud"].size[1]
    np.savez(out, shown=shown, frame=state.frame, hud_h=hud_h, driver=window.driver, turn=state.action.turn)
    if wait:
        print("READY", flush=True)
        sys.stdin.readline()
    backend.close()
    window.close()


def check(img: np.ndarray, frame: np.ndarray, hud_h: int) -> None:
    assert img.shape == (H, W, 3)
    ref = frame.repeat(4, 0).repeat(4, 1)                     # nearest, exactly 4x
    hud = np.zeros((H, W), bool)
    hud[8:8 + hud_h, 8:8 + HUD_W] = True
    same = (img == ref).all(axis=2)
    assert same[~hud].all(), f"{(~same[~hud]).sum()} frame pixels differ outside the HUD"
    assert (~same[hud]).mean() > 0.5                         # the HUD panel darkens and writes over the frame


def spawn(env: dict, wait: bool, out: Path) -> subprocess.Popen:
    e = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "SDL_VIDEODRIVER")}
    e.update(env, SDL_AUDIODRIVER="dummy", PYGAME_HIDE_SUPPORT_PROMPT="1")
    args = [sys.executable, __file__, "--child", str(out)] + (["--wait"] if wait else [])
    return subprocess.Popen(args, env=e, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_window_under_sdl_offscreen_driver(tmp_path):
    p = spawn({"SDL_VIDEODRIVER": "offscreen"}, False, tmp_path / "o.npz")
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    r = np.load(tmp_path / "o.npz")
    assert str(r["driver"]) == "offscreen" and float(r["turn"]) == 1.0
    check(r["shown"], r["frame"], int(r["hud_h"]))


def read_xwd(data: bytes) -> np.ndarray:
    """Minimal XWD (X Window Dump) reader for 24/32-bit TrueColor ZPixmaps, as Xvfb writes them."""
    f = struct.unpack(">25I", data[:100])
    header_size, width, height, byte_order, bpp, bpl, ncolors = f[0], f[4], f[5], f[7], f[11], f[12], f[19]
    assert bpp == 32, f"expected 32 bits per pixel, got {bpp}"
    start = header_size + ncolors * 12
    px = np.frombuffer(data[start:start + bpl * height], np.uint8).reshape(height, bpl // 4, 4)[:, :width]
    return px[..., 2::-1] if byte_order == 0 else px[..., 1:]    # LSB first: B G R x


@pytest.mark.skipif(any(shutil.which(t) is None for t in ("Xvfb", "xwd", "xwininfo")),
                    reason="Xvfb, xwd or xwininfo not installed")
def test_real_window_under_xvfb_screenshot_shows_frame_and_hud(tmp_path):
    display = f":{90 + os.getpid() % 50}"
    xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p = None
    try:
        time.sleep(1.0)
        p = spawn({"DISPLAY": display}, True, tmp_path / "x.npz")
        line = p.stdout.readline()
        assert line.strip() == "READY", p.stderr.read()
        wid = None
        for _ in range(20):       # the X server may map the window a moment after the first flip
            tree = subprocess.run(["xwininfo", "-root", "-tree", "-display", display], capture_output=True,
                                  text=True, timeout=30).stdout
            wid = next((ln.split()[0] for ln in tree.splitlines() if '"Dreamloop"' in ln), None)
            if wid:
                break
            time.sleep(0.25)
        assert wid, tree
        # By id: xwd -name reads WM_NAME as a plain STRING, and SDL names windows in UTF-8.
        shot = subprocess.run(["xwd", "-silent", "-id", wid, "-display", display], capture_output=True, timeout=30)
        assert shot.returncode == 0, shot.stderr
        p.communicate("\n", timeout=60)
        r = np.load(tmp_path / "x.npz")
        assert str(r["driver"]) == "x11"
        img = read_xwd(shot.stdout)
        check(img, r["frame"], int(r["hud_h"]))
        assert np.array_equal(img, r["shown"])                # the screen shows exactly what was drawn
    finally:
        if p is not None and p.poll() is None:
            p.kill()
        xvfb.terminate()
        xvfb.wait(timeout=10)


if __name__ == "__main__" and sys.argv[1:2] == ["--child"]:
    child(Path(sys.argv[2]), "--wait" in sys.argv)
