"""The evaluation recipe's output files: metrics.json, table.md, per-tick CSVs, PNG plots and the side-by-side
video. world_model/recipes/evaluate.py computes the numbers; this module only formats and writes them.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import metrics as M

VIDEO = "side_by_side.mp4"


def write_report(out: Path, res: dict[str, Any], *, tf_rows: Sequence[dict[str, Any]],
                 probe_rows: Sequence[dict[str, Any]], idle_rows: Sequence[dict[str, Any]],
                 window_rows: Sequence[dict[str, Any]] = (), model_frames: np.ndarray,
                 game_frames: np.ndarray, start: int, horizons: Sequence[int], video_scale: int) -> None:
    """Write every output into `out`. Sets res["video"] to the video's file name, or None when it was skipped.

    metrics.json goes first (with "video": null), so a long evaluation keeps its numbers whatever happens to
    the video, and is rewritten with the video's name once that file exists."""
    res["video"] = None
    write_metrics(out / "metrics.json", res)
    (out / "table.md").write_text(table(res))
    # A part left out (--parts) writes none of its files.
    if res["autoregressive"] is not None:
        c = res["autoregressive"]["curve"]
        write_csv(out / "horizon.csv", [{"horizon": i + 1, **{k: float(c[k][i]) for k in c}}
                                        for i in range(len(c["psnr"]))])
        write_csv(out / "windows.csv", window_rows)
        plot_horizon(res["autoregressive"], horizons, out / "horizon.png")
    for name, part, rows in (("teacher_forced", "teacher_forced", tf_rows), ("probes", "action_response", probe_rows),
                             ("idle", "idle", idle_rows)):
        if res[part] is not None:
            write_csv(out / f"{name}.csv", rows)
    if res["drift"] is None:
        return
    rows = drift_rows(model_frames, game_frames, start)
    write_csv(out / "drift.csv", rows)
    if rows:
        plot_drift(rows, out / "drift.png")
    if write_video(out / VIDEO, model_frames, game_frames, start, video_scale):
        res["video"] = VIDEO
        write_metrics(out / "metrics.json", res)
    else:
        print(f"{VIDEO} skipped: imageio-ffmpeg is not installed", flush=True)


def write_metrics(path: Path, res: dict[str, Any]) -> None:
    path.write_text(json.dumps(jsonable(res), indent=1) + "\n")


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    columns = list(rows[0]) if rows else []
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: f"{v:.4f}" if isinstance(v, float) else v for k, v in r.items()})


def fmt(x: float, unit: str = "", digits: int = 2) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}{unit}"


def table(res: dict[str, Any]) -> str:
    """The markdown table for docs/ (targets from issues 3 and 4)."""
    ar, tf, resp, idle, dr = (res[k] for k in ("autoregressive", "teacher_forced", "action_response", "idle", "drift"))
    target = {"1": "", "8": ">= 20 dB", "32": ">= 17 dB", "128": ""}
    skipped = [k for k in ("autoregressive", "teacher_forced", "action_response", "idle", "drift") if res[k] is None]
    lines = [f"Model `{res['model']}` ({res['kind']}, {res['sampling']}), {res['device']}; "
             f"{len(res['traces'])} held-out traces" + (f", {ar['windows']} windows." if ar else ".")
             + (f" Skipped (--parts): {', '.join(skipped)}." if skipped else ""), "",
             "| metric | model | baseline | target |", "|---|---|---|---|"]
    for h, v in (ar["horizons"] if ar else {}).items():
        lines.append(f"| autoregressive PSNR @ {h} ticks | {fmt(v['psnr'], ' dB')} | {fmt(v['frozen_psnr'], ' dB')} "
                     f"(frozen frame) | {target.get(h, '')} |")
    for h, v in (ar["horizons"] if ar else {}).items():
        lines.append(f"| autoregressive SSIM @ {h} ticks | {fmt(v['ssim'], '', 3)} | {fmt(v['frozen_ssim'], '', 3)} "
                     f"(frozen frame) | |")
    if tf:
        lines.append(f"| teacher-forced next-frame PSNR | {fmt(tf['psnr'], ' dB')} | {fmt(tf['copy_last_psnr'], ' dB')} "
                     f"(copy last frame); autoencoder ceiling {fmt(tf['autoencoder_psnr'], ' dB')} | >= 26 dB |")
    for k in ("turn", "move", "combined") if resp else ():
        v = resp[k]
        gain = f"; gain {fmt(v['gain'], '', 2)}" if "gain" in v else ""   # (older metrics.json have none)
        lines.append(f"| action response, {k} | {fmt(100 * v['score'], '%', 1)} ({v['correct']}/{v['scored']}{gain}) "
                     f"| 0% (frozen) | {'>= 90%' if k == 'combined' else ''} |")
    for h, v in (idle["horizons"] if idle else {}).items():
        lines.append(f"| idle PSNR @ {h} no-op ticks ({idle['states']} states) | {fmt(v['psnr'], ' dB')} | "
                     f"{fmt(v['frozen_psnr'], ' dB')} (frozen frame) | |")
    if not dr:
        return "\n".join(lines) + "\n"
    runs = dr.get("rollouts", 1)
    verdict = ('collapsed' if dr['collapsed'] else 'no collapse') if runs == 1 else \
        f"{dr['collapsed_rollouts']} of {runs} rollouts collapsed"
    spread = (f" ({fmt(100 * dr['in_range_min'], '', 1)}-{fmt(100 * dr['in_range_max'], '%', 1)})"
              if runs > 1 and "in_range_min" in dr else "")
    lines.append(f"| drift over {dr['ticks']} ticks | {verdict}: in range "
                 f"{fmt(100 * dr.get('in_range', float('nan')), '%', 1)}{spread}, histogram TV {fmt(dr.get('hist_tv_last_quarter', float('nan')), '', 3)}, "
                 f"motion ratio {fmt(dr.get('motion_ratio_last_quarter', float('nan')))}, frozen "
                 f"{fmt(100 * dr.get('frozen_fraction_last_quarter', float('nan')), '%', 1)}; mean up to "
                 f"{fmt(dr.get('mean_excess_max', float('nan')), '', 1)} grey levels outside the game's range, longest "
                 f"spell outside {dr.get('longest_out_of_range_ticks', 'n/a')} ticks | game | no collapse |")
    return "\n".join(lines) + "\n"


def plot_horizon(ar: dict[str, Any], horizons: Sequence[int], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = ar["curve"]
    x = np.arange(1, len(c["psnr"]) + 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, k, unit in ((axes[0], "psnr", "PSNR (dB)"), (axes[1], "ssim", "SSIM")):
        ax.plot(x, c[k], label="model")
        ax.plot(x, c[f"frozen_{k}"], "--", label="frozen frame")
        for h in horizons:
            ax.axvline(h, color="gray", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("horizon (ticks)")
        ax.set_ylabel(unit)
        ax.legend()
    fig.suptitle(f"autoregressive rollouts, {ar['windows']} windows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_drift(rows: Sequence[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["tick"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
    axes[0].plot(t, [r["psnr"] for r in rows], lw=0.7)
    axes[0].set_ylabel("PSNR vs game (dB)")
    for ax, k, label in ((axes[1], "mean", "frame mean"), (axes[2], "diff", "|frame - previous|")):
        ax.plot(t, [r[f"{k}_game"] for r in rows], lw=0.7, label="game")
        ax.plot(t, [r[f"{k}_model"] for r in rows], lw=0.7, label="model")
        ax.set_ylabel(label)
        ax.legend()
    axes[2].set_xlabel("tick")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def drift_rows(model: np.ndarray, game: np.ndarray, start: int) -> list[dict[str, Any]]:
    n = len(model)
    if n == 0:
        return []
    psnr, ssim = M.psnr(model, game[:n]).numpy(), M.ssim(model, game[:n]).numpy()
    sm, sg = M.frame_stats(model), M.frame_stats(game[:n])
    dm = np.r_[np.nan, M.mean_abs_diff(model).numpy()]
    dg = np.r_[np.nan, M.mean_abs_diff(game[:n]).numpy()]
    return [{"tick": start + i, "psnr": float(psnr[i]), "ssim": float(ssim[i]),
             "mean_model": float(sm["mean"][i]), "mean_game": float(sg["mean"][i]),
             "std_model": float(sm["std"][i]), "std_game": float(sg["std"][i]),
             "diff_model": float(dm[i]), "diff_game": float(dg[i])} for i in range(n)]


def write_video(path: Path, model: np.ndarray, game: np.ndarray, start: int, scale: int, fps: int = 35) -> bool:
    """model | game, with a label strip naming each side and the tick. Returns False, writing nothing, when
    imageio has no FFMPEG writer here (imageio-ffmpeg not installed): the video is the one optional output."""
    from PIL import Image, ImageDraw

    tmp = path.with_name(path.stem + ".part.mp4")
    try:
        import imageio.v2 as iio
        writer = iio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=None,
                                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
                                output_params=["-crf", "18", "-preset", "veryfast"])
    except ImportError:
        tmp.unlink(missing_ok=True)
        return False
    with writer:
        for i, (a, b) in enumerate(zip(model, game)):
            pair = np.concatenate([a, b], 1).repeat(scale, 0).repeat(scale, 1)        # (H*s, 2W*s, 3)
            strip = Image.new("RGB", (pair.shape[1], 14 * scale), (0, 0, 0))
            draw = ImageDraw.Draw(strip)
            half = pair.shape[1] // 2
            draw.text((3, 1), f"model  t={start + i}", fill=(255, 255, 255))
            draw.text((half + 3, 1), "game", fill=(255, 255, 255))
            writer.append_data(np.concatenate([np.asarray(strip), pair], 0))
    os.replace(tmp, path)
    return True


def jsonable(x: Any) -> Any:
    """NaN -> None so metrics.json is strict JSON."""
    if isinstance(x, float):
        return None if math.isnan(x) else x
    if isinstance(x, dict):
        return {k: jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.bool_, np.integer, np.floating)):
        return jsonable(x.item())
    return x
