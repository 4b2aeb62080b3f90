"""Plot a training run's learning curve from its ``history.jsonl`` (one line per epoch).

    python scripts/plot_learning_curve.py training/water-revpbe0d3/history.jsonl

Writes ``learning_curve.png`` next to the history: validation force MAE (meV/Å) and energy
MAE (meV/atom) against optimiser steps, with the learning rate on a log scale below. Where
the history has them, the force MAE per chemistry of the validation frames (intact water,
ions, H2) is drawn dashed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from symbreak.analysis.molecules import WATER_FRAME_CLASSES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path)
    parser.add_argument("--out", type=Path, help="default: learning_curve.png beside the history")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.history.read_text().splitlines() if line.strip()]
    if not rows:
        raise SystemExit(f"{args.history}: no epochs recorded")
    steps = [r["step"] for r in rows]
    fig, (ax_f, ax_lr) = plt.subplots(
        2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax_f.plot(steps, [r["val_force_mae_meV_A"] for r in rows], color="C0", label="all")
    drawn = False
    for kind, style in zip(WATER_FRAME_CLASSES, (":", "--", "-."), strict=True):
        key = f"val_{kind}_force_mae_meV_A"
        mine = [r for r in rows if key in r]
        if mine:
            ax_f.plot([r["step"] for r in mine], [r[key] for r in mine], "C0" + style, label=kind)
            drawn = True
    if drawn:
        ax_f.legend(loc="upper right", title="validation frames", fontsize=8)
    ax_f.set_ylabel("validation force MAE (meV/Å)", color="C0")
    ax_e = ax_f.twinx()
    ax_e.plot(steps, [r["val_energy_mae_meV_atom"] for r in rows], color="C1")
    ax_e.set_ylabel("validation energy MAE (meV/atom)", color="C1")
    ax_f.set_title(f"{args.history.parent.name}: {len(rows)} epochs, {steps[-1]} steps")
    ax_lr.semilogy(steps, [r["lr"] for r in rows], color="k")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimiser step")
    fig.tight_layout()
    out = args.out or args.history.with_name("learning_curve.png")
    fig.savefig(out, dpi=120)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
