#version 330
uniform sampler2D overlay;   // RGBA, straight alpha
in vec2 uv;
out vec4 color;
void main() {
    color = texture(overlay, uv);
}
