#!/usr/bin/env bash
# 10 minutes of paced play (21,350 ticks at 35 Hz) in a real window on the GPU machine (issue 5), the shipped
# student on its default settings. Needs the player's wheels in .whl/ and the GL vendor libraries in .gl/
# (docs/GPU.md); without them, or if a 70-tick window smoke run fails, it plays headless instead.
# Writes runs/play/paced.json (the whole-run report of `play --ticks --json`) and runs/logs/paced.log.
cd "$(dirname "$0")/../.."
mkdir -p runs/logs runs/play
# Each on its own: in session 3 .gl/ did not arrive while .whl/ did, and skipping both left even headless
# play without its wheels.
# The GL debs may sit in .whl/gl/ (one carried path fewer) or in .gl/.
for f in .whl/gl/*.deb .gl/*.deb; do [ -e "$f" ] && dpkg -x "$f" /; done; ldconfig
ls /usr/lib/x86_64-linux-gnu/libEGL.so.1 > /dev/null 2>&1 || echo "$(date +%T) libEGL missing: the window smoke will fail"
if ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/vz:/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 -c "import pygame, moderngl" || echo "$(date +%T) pygame/moderngl missing: the window run will fail"
egl=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -e $egl ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$egl
if SDL_VIDEODRIVER=offscreen timeout 120 python3 main.py play --device cuda --ticks 70 --json runs/play/smoke.json \
    > runs/logs/smoke.log 2>&1; then
  echo "$(date +%T) window smoke ok; paced play in a window"
  SDL_VIDEODRIVER=offscreen python3 main.py play --device cuda --ticks 21350 --json runs/play/paced.json > runs/logs/paced.log 2>&1
else
  echo "$(date +%T) window smoke failed (runs/logs/smoke.log); paced play headless"
  python3 main.py play --headless --device cuda --ticks 21350 --json runs/play/paced.json > runs/logs/paced.log 2>&1
fi
echo "$(date +%T) paced play rc=$?"
