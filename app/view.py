"""GL drawing with moderngl: the game frame on a letterboxed quad, overlays (HUD, help) blended on top.

`View` needs only a moderngl context and a target framebuffer, so tests can drive it with a
standalone EGL context and an offscreen framebuffer, and the window drives it with `ctx.screen`.
One `upload(frame)` per tick writes the frame texture; `draw(size)` per display frame.
"""
from __future__ import annotations

from pathlib import Path

import moderngl
import numpy as np

SHADERS = Path(__file__).resolve().parents[1] / "assets" / "shaders"


def letterbox(frame_wh: tuple[int, int], target_wh: tuple[int, int]) -> tuple[float, float, float]:
    """(extent_x, extent_y, scale): NDC half-sizes of the largest aspect-correct fit, and px per texel."""
    fw, fh = frame_wh
    tw, th = target_wh
    s = min(tw / fw, th / fh)
    return fw * s / tw, fh * s / th, s


class View:
    def __init__(self, ctx: moderngl.Context, *, sharp: bool = True):
        self.ctx = ctx
        self.sharp = sharp
        read = lambda n: (SHADERS / n).read_text()  # noqa: E731
        self.frame_prog = ctx.program(vertex_shader=read("frame.vert"), fragment_shader=read("frame.frag"))
        self.hud_prog = ctx.program(vertex_shader=read("hud.vert"), fragment_shader=read("hud.frag"))
        quad = np.array([-1, -1, 1, -1, -1, 1, 1, 1], "f4")
        unit = np.array([0, 0, 1, 0, 0, 1, 1, 1], "f4")
        self.frame_vao = ctx.vertex_array(self.frame_prog, [(ctx.buffer(quad.tobytes()), "2f", "in_pos")])
        self.hud_vao = ctx.vertex_array(self.hud_prog, [(ctx.buffer(unit.tobytes()), "2f", "in_pos")])
        self.texture: moderngl.Texture | None = None
        self.overlays: dict[str, moderngl.Texture] = {}
        self.uploads = 0

    # -- per tick ------------------------------------------------------------------------------------
    def upload(self, frame: np.ndarray) -> None:
        """One texture write per tick; the texture is (re)made only when the frame size changes."""
        h, w, _ = frame.shape
        if self.texture is None or self.texture.size != (w, h):
            if self.texture is not None:
                self.texture.release()
            self.texture = self.ctx.texture((w, h), 3, dtype="f1")
            self.texture.filter = (moderngl.LINEAR, moderngl.LINEAR)   # nearest mode uses texelFetch
            self.texture.repeat_x = self.texture.repeat_y = False
        self.texture.write(np.ascontiguousarray(frame))
        self.uploads += 1

    def set_overlay(self, name: str, rgba: bytes | None, size: tuple[int, int] = (0, 0)) -> None:
        """RGBA bytes, top row first (pygame.image.tobytes(surf, 'RGBA')); None removes the overlay."""
        tex = self.overlays.get(name)
        if rgba is None:
            if tex is not None:
                tex.release()
                del self.overlays[name]
            return
        if tex is None or tex.size != size:
            if tex is not None:
                tex.release()
            tex = self.overlays[name] = self.ctx.texture(size, 4, dtype="f1")
            tex.filter = (moderngl.NEAREST, moderngl.NEAREST)
        tex.write(rgba)

    # -- per display frame ---------------------------------------------------------------------------
    def draw(self, size: tuple[int, int], fbo: moderngl.Framebuffer | None = None) -> None:
        fbo = fbo or self.ctx.screen
        fbo.use()
        self.ctx.viewport = (0, 0, *size)
        self.ctx.clear(0.0, 0.0, 0.0, 1.0)
        if self.texture is not None:
            ex, ey, s = letterbox(self.texture.size, size)
            self.frame_prog["extent"].value = (ex, ey)
            self.frame_prog["tex_size"].value = self.texture.size
            self.frame_prog["scale"].value = (s, s)
            self.frame_prog["sharp"].value = int(self.sharp)
            self.texture.use(0)
            self.frame_vao.render(moderngl.TRIANGLE_STRIP)
        self.ctx.enable(moderngl.BLEND)
        self.ctx.blend_func = moderngl.SRC_ALPHA, moderngl.ONE_MINUS_SRC_ALPHA
        for name, tex in self.overlays.items():
            self._blit_overlay(tex, size, centered=name != "hud")
        self.ctx.disable(moderngl.BLEND)

    def _blit_overlay(self, tex: moderngl.Texture, size: tuple[int, int], centered: bool) -> None:
        """Pixel-exact placement: top-left for the HUD, centred for the help page."""
        w, h = tex.size
        x0 = (size[0] - w) // 2 if centered else 8
        y0 = (size[1] - h) // 2 if centered else 8
        to_ndc = lambda x, y: (2 * x / size[0] - 1, 1 - 2 * y / size[1])  # noqa: E731
        self.hud_prog["rect"].value = (*to_ndc(x0, y0), *to_ndc(x0 + w, y0 + h))
        tex.use(0)
        self.hud_vao.render(moderngl.TRIANGLE_STRIP)

    def read(self, size: tuple[int, int], fbo: moderngl.Framebuffer | None = None) -> np.ndarray:
        """What is on the target, as (H, W, 3) uint8 top row first (GL rows start at the bottom)."""
        fbo = fbo or self.ctx.screen
        data = fbo.read(viewport=(0, 0, *size), components=3)
        return np.frombuffer(data, np.uint8).reshape(size[1], size[0], 3)[::-1].copy()
