#!/usr/bin/env bash
# Dreamloop set-up, then one action:
#   bash setup.sh play [ARGS...]   set up, then play the shipped model (python main.py ARGS...)
#   bash setup.sh test [ARGS...]   set up with test tools, then run the test suite
#   bash setup.sh                  set up only
# Needs Python 3.11+ on Debian/Ubuntu; makes .venv/ in this folder. No GPU needed.
set -euo pipefail
cd "$(dirname "$0")"
what="${1:-setup}"; [ $# -gt 0 ] && shift
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
req=requirements.txt
[ "$what" = test ] && req=requirements-dev.txt
stamp=".venv/.installed-$(sha1sum requirements.txt requirements-dev.txt | sha1sum | cut -c1-12)-$what"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch first, from its own pin, so no dependency can pull a multi-GB CUDA build instead.
  .venv/bin/python -m pip install -q "$(grep -E '^torch==' requirements.txt)"
  .venv/bin/python -m pip install -q -r "$req"
  touch "$stamp"
fi

if [ "$what" = test ] && ! { command -v Xvfb && command -v xwd && command -v xwininfo; } >/dev/null 2>&1; then
  # The window test needs a virtual X screen; skip quietly where apt is not ours to use.
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends xvfb x11-apps x11-utils) >/dev/null 2>&1 \
      || echo "setup.sh: could not install xvfb; the Xvfb window test will be skipped" >&2
  fi
fi

case "$what" in
  play) exec .venv/bin/python main.py "$@" ;;
  test) exec .venv/bin/python -m pytest -q "$@" ;;
  setup) echo "set up in .venv/" ;;
  *) echo "usage: bash setup.sh [play|test] [ARGS...]" >&2; exit 2 ;;
esac
