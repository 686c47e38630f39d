#version 330
// Fullscreen quad shrunk by `extent` (NDC half-sizes) for aspect-correct letterboxing.
uniform vec2 extent;
in vec2 in_pos;          // corners in [-1, 1]
out vec2 uv;
void main() {
    // Frame rows arrive top row first and GL textures start at the bottom: flip v.
    uv = vec2(in_pos.x * 0.5 + 0.5, 0.5 - in_pos.y * 0.5);
    gl_Position = vec4(in_pos * extent, 0.0, 1.0);
}
