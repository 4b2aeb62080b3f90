"""g_OO(r) of the stability runs in one plot: classical NVT at 300 and 450 K
(``stability_md.py``) and the 8-bead PIMD at 300 K (``pimd_stability.py``, over every bead).

Usage: ``python scripts/plot_g_oo.py [--dir training/water-revpbe0d3] [--out FILE.png]``;
reads ``stability_300K.json``, ``stability_450K.json`` and ``pimd_stability.json`` from
``--dir`` (those present) and prints each first peak.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

RUNS = {
    "stability_300K.json": "classical NVT, 300 K",
    "stability_450K.json": "classical NVT, 450 K",
    "pimd_stability.json": "8-bead PIMD, 300 K (all beads)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="training/water-revpbe0d3")
    parser.add_argument("--out", help="PNG to write (default: DIR/g_OO.png)")
    args = parser.parse_args()
    from symbreak.analysis.report import new_figure, save_figure

    folder = Path(args.dir)
    fig, ax = new_figure(1, 1, size=(6, 4))
    for name, label in RUNS.items():
        path = folder / name
        if not path.is_file():
            continue
        g_oo = json.loads(path.read_text()).get("g_OO") or {}
        if "r" not in g_oo:
            continue
        height, error = g_oo["first_peak_g"], g_oo["first_peak_g_err"]
        peak = f"peak {height:.2f} ± {error:.2f} at {g_oo['first_peak_r']:.2f} Å"
        print(f"{label}: {peak} ({g_oo['frames']} frames)")
        ax.plot(g_oo["r"], g_oo["g"], label=f"{label}: {peak}")
    ax.axhline(1.0, color="0.8", lw=0.8)
    ax.set_xlabel("r_OO (Å)")
    ax.set_ylabel("g_OO(r)")
    ax.set_xlim(2.0, 6.0)
    ax.legend(fontsize=8)
    out = Path(args.out) if args.out else folder / "g_OO.png"
    save_figure(fig, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
