"""Dreamloop: play a neural world model of Freedoom E1M1, or the real game, in a window.

    python main.py [play] [--backend model|game|side] [--model student|teacher|PATH] [--steps N]
                   [--device auto|cpu|cuda] [--seed N] [--settings FILE] [--headless --ticks N [--unpaced]]
    python main.py replay TRACE --out DIR [--backend model|game] [--model ...] [--steps N] [--device ...]
                   [--settings FILE] [--no-video]
    python main.py kiosk [--settings settings/kiosk.yaml] [--headless --ticks N]     (demo booth: app/kiosk.py)
    python main.py bench [--device cuda|cpu] [--ticks N] [--json FILE] [--model PATH] ...   (app/bench.py; --help)

Any problem the user must fix (settings, trace, checkpoint, display) is one line on stderr and a
non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")

from app.backends import BackendError, make_backend  # noqa: E402
from app.config import PlayConfig, load_play, resolve  # noqa: E402
from settings import SettingsError  # noqa: E402
from world_model.actions import SchemaError  # noqa: E402
from world_model.trace import TraceError  # noqa: E402

DEFAULT_SETTINGS = "settings/play.yaml"
KIOSK_SETTINGS = "settings/kiosk.yaml"
USER_ERRORS = (SettingsError, TraceError, SchemaError, BackendError)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="main.py", description="Dreamloop: a playable world model of Freedoom E1M1.")
    sub = p.add_subparsers(dest="command")

    def common(sp: argparse.ArgumentParser, backends: tuple[str, ...]) -> None:
        sp.add_argument("--backend", choices=backends, help="what makes the frames (default: settings)")
        sp.add_argument("--model", help="student | teacher | a checkpoint PATH (default: settings)")
        sp.add_argument("--steps", type=int, help="denoising steps per frame (student: 1 or 2)")
        sp.add_argument("--device", choices=("auto", "cpu", "cuda"), help="where the model runs")
        sp.add_argument("--seed", type=int, help="episode seed (play; replay uses the trace's)")
        sp.add_argument("--settings", default=DEFAULT_SETTINGS, help=f"player settings YAML (default {DEFAULT_SETTINGS})")

    play = sub.add_parser("play", help="play in a window (the default)")
    common(play, ("model", "game", "side"))
    play.add_argument("--headless", action="store_true", help="no window: run the loop on no-op input, print timing")
    play.add_argument("--ticks", type=int, help="stop after N ticks and print a whole-run report "
                      "(with --headless: default 350; in a window: default until quit)")
    play.add_argument("--json", help="with --ticks: also write the whole-run report (timing, memory) as JSON")
    play.add_argument("--unpaced", action="store_true", help="with --headless: tick as fast as possible")
    play.add_argument("--record", action="store_true", help="start recording (mp4 + trace) at the first tick")
    rep = sub.add_parser("replay", help="replay a trace headless into frames.npz, timing.csv, video.mp4")
    common(rep, ("model", "game"))
    rep.add_argument("trace", help="trace JSONL file")
    rep.add_argument("--out", required=True, help="output folder")
    rep.add_argument("--no-video", action="store_true", help="skip video.mp4")
    sub.add_parser("bench", help="per-tick cost by phase and engine (main.py bench --help; app/bench.py)")
    kiosk = sub.add_parser("kiosk", help="demo booth: attract loop, idle reset, locked controls, watchdog")
    kiosk.add_argument("--settings", default=KIOSK_SETTINGS, help=f"kiosk settings YAML (default {KIOSK_SETTINGS})")
    kiosk.add_argument("--headless", action="store_true", help="no window (the attract loop only)")
    kiosk.add_argument("--ticks", type=int, help="stop after N ticks (default: run until the admin chord)")
    if not argv or argv[0] not in ("play", "replay", "kiosk", "-h", "--help"):
        argv = ["play", *argv]
    return p.parse_args(argv)


def load_settings(args: argparse.Namespace) -> PlayConfig:
    overrides = {k: getattr(args, k) for k in ("backend", "model", "device", "seed") if getattr(args, k) is not None}
    if args.steps is not None:
        overrides["session.teacher_steps" if args.model == "teacher" else "session.steps"] = args.steps
    path = resolve(args.settings) if args.settings == DEFAULT_SETTINGS else Path(args.settings)
    return load_play(path, overrides)


def cmd_play(args: argparse.Namespace, cfg: PlayConfig) -> int:
    from app.loop import new_state, reset, run, stop_recording, toggle_recording
    from app.timing import format_report
    from app.config import NoDisplay
    from input.bindings import load_bindings

    bindings = load_bindings(resolve(cfg.bindings))
    if not args.headless:
        from app.window import Window, display_available      # moderngl: only for a window
    if not args.headless and not display_available():
        raise NoDisplay("no display found (DISPLAY and WAYLAND_DISPLAY are unset); "
                        "run headless: python main.py play --headless --ticks 350")
    backend = make_backend(cfg, cfg.backend, cfg.model, cfg.device)
    window = state = None
    try:
        window = None if args.headless else Window(cfg.window)
        state = new_state(cfg, backend, bindings)
        reset(state, window.view if window else None)
        if args.record:
            toggle_recording(state)
        status = backend.status()
        if "no GPU" in status.device:
            print("dreamloop: no GPU found; the model runs on the CPU (slower)", file=sys.stderr)
        ticks = args.ticks if args.ticks is not None else (350 if args.headless else None)
        if ticks is not None:
            print(f"dreamloop: {'headless' if args.headless else 'window'} {status.name} on {status.device}, "
                  f"{ticks} ticks{' unpaced' if args.unpaced else f' at {cfg.tick_hz:g} Hz'}")
        if ticks is None:
            run(state, window, paced=not args.unpaced)
        else:
            report = measured_run(state, window, ticks, paced=not args.unpaced)
            report["faults"] = backend.status().faults
            report.update(backend=status.name, device=status.device, window=window is not None,
                          paced=not args.unpaced)
            print(format_report(report) + f"  faults {report['faults']}")
            print("memory: " + "; ".join(f"tick {t}: {m}" for t, m in report["memory"]))
            if args.json:
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    finally:
        if state is not None:
            stop_recording(state)
        backend.close()
        if window is not None:
            window.close()
    return 0


def measured_run(state, window, ticks: int, paced: bool, samples: int = 10) -> dict:
    """Run `ticks` ticks in `samples` segments, reading host/GPU memory after each (a soak shows whether
    it stays flat), and return the whole-run timing report."""
    from app.loop import run
    from app.timing import memory_line, run_report

    memory = []
    for k in range(1, samples + 1):
        stats = run(state, window, max_ticks=ticks * k // samples, paced=paced)
        memory.append((stats.ticks, memory_line()))
        if not state.running:      # quit from the window
            break
    return {**run_report(stats), "memory": memory}


def cmd_replay(args: argparse.Namespace, cfg: PlayConfig) -> int:
    from app.replay import replay
    from world_model import trace as tr

    trace = tr.load(args.trace, world=cfg.game.world)
    backend = make_backend(cfg, args.backend or ("game" if cfg.backend == "game" else "model"), cfg.model, cfg.device)
    try:
        out = Path(args.out)
        summary = replay(trace, backend, out, video=not args.no_video)
    finally:
        backend.close()
    print(f"dreamloop: replayed {summary['ticks']} ticks in {summary['seconds']:.2f} s "
          f"(step p50 {summary['step_p50_ms']:.2f} ms, p99 {summary['step_p99_ms']:.2f} ms) -> {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="dreamloop: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:                      # its own parser and report: app/bench.py
        from app.bench import main as bench_main
        return bench_main(argv[1:])
    args = parse_args(argv)
    from app.config import NoDisplay      # not app.window: a headless run never needs moderngl

    try:
        if args.command == "kiosk":
            from app.kiosk import run_kiosk
            path = resolve(args.settings) if args.settings == KIOSK_SETTINGS else Path(args.settings)
            run_kiosk(path, headless=args.headless, ticks=args.ticks)
            return 0
        cfg = load_settings(args)
        return cmd_replay(args, cfg) if args.command == "replay" else cmd_play(args, cfg)
    except (*USER_ERRORS, NoDisplay) as e:
        print(f"dreamloop: {e}", file=sys.stderr)
        return 2 if isinstance(e, NoDisplay) else 1
    except OSError as e:
        print(f"dreamloop: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except RuntimeError as e:
        if type(e).__name__ == "OutOfMemoryError":   # torch.cuda.OutOfMemoryError, without importing torch here
            print("dreamloop: CUDA ran out of memory; lower session.window in settings/play.yaml, use --steps 1, "
                  "pick a smaller --model, or run with --device cpu", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
