#version 330
// A screen-aligned rectangle for an overlay texture; `rect` is (left, top, right, bottom) in NDC.
uniform vec4 rect;
in vec2 in_pos;          // corners in [0, 1], (0, 0) = top-left
out vec2 uv;
void main() {
    uv = in_pos;         // overlay rows arrive top row first, and texture row 0 is v = 0
    gl_Position = vec4(mix(rect.xy, rect.zw, in_pos), 0.0, 1.0);
}
