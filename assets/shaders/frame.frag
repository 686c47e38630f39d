#version 330
// Nearest or sharp-bilinear upscaling of the game frame.
// Sharp-bilinear: inside each source texel the colour is flat; only a band one output pixel wide at
// texel edges is interpolated, so pixels stay crisp at any (non-integer) scale without shimmer.
uniform sampler2D frame;     // LINEAR-filtered
uniform vec2 tex_size;       // source size in texels
uniform vec2 scale;          // output pixels per source texel
uniform int sharp;           // 0 nearest, 1 sharp-bilinear
in vec2 uv;
out vec4 color;
void main() {
    vec2 texel = uv * tex_size;
    if (sharp == 0) {
        ivec2 p = clamp(ivec2(floor(texel)), ivec2(0), ivec2(tex_size) - 1);
        color = vec4(texelFetch(frame, p, 0).rgb, 1.0);
        return;
    }
    vec2 base = floor(texel);
    vec2 d = fract(texel) - 0.5;
    vec2 region = 0.5 - 0.5 / max(scale, vec2(1.0));
    vec2 f = (d - clamp(d, -region, region)) * scale + 0.5;
    color = vec4(texture(frame, (base + f) / tex_size).rgb, 1.0);
}
