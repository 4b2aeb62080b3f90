"""The reproduction report: result tables (ours next to the study's), the markdown
document and its comparison plots.

Each experiment returns an :class:`Outcome` (tables of :class:`Row`, plots, notes, the
runs it made, or the error that stopped it); :func:`write_report` renders them all into
``reproduction.md`` and ``summary.json``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..analysis.report import new_figure, save_figure, write_json

# The study's reference numbers (re-exported: experiments read them from here).
from .study import SHORT_CITATION
from .study import STUDY as STUDY


@dataclass
class Row:
    """One line of a results table: ``value`` (a number, or text) ± ``err`` in ``unit``,
    the study's value for the same quantity (text, empty when it has none) and a note."""

    quantity: str
    value: float | str | None
    err: float | None = None
    unit: str = ""
    study: str = ""
    note: str = ""

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("quantity", "value", "err", "unit", "study", "note")}


@dataclass
class Table:
    title: str
    rows: list[Row] = field(default_factory=list)

    def add(self, *args: Any, **kwargs: Any) -> Row:
        row = Row(*args, **kwargs)
        self.rows.append(row)
        return row


@dataclass
class Outcome:
    """What one experiment produced. ``status``: ``ok``, ``partial`` (a run was stopped
    by its time limit; the numbers use what it wrote) or ``failed`` (``error`` says why);
    ``plots`` are paths relative to the report's folder."""

    key: str
    title: str
    status: str = "ok"
    tables: list[Table] = field(default_factory=list)
    plots: list[tuple[str, str]] = field(default_factory=list)  #: (caption, path)
    notes: list[str] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    elapsed: float = 0.0
    date: str = ""  #: when it finished (YYYY-MM-DD HH:MM)

    @property
    def number(self) -> str:
        """The experiment's number: the key's prefix (``"3_liquid"`` → ``"3"``)."""
        return self.key.split("_", 1)[0]

    def table(self, title: str) -> Table:
        t = Table(title)
        self.tables.append(t)
        return t

    def to_dict(self) -> dict:
        return {
            "key": self.key,
            "title": self.title,
            "status": self.status,
            "error": self.error,
            "elapsed_s": round(self.elapsed, 1),
            "notes": self.notes,
            "tables": [
                {"title": t.title, "rows": [r.to_dict() for r in t.rows]} for t in self.tables
            ],
            "plots": [{"caption": c, "path": p} for c, p in self.plots],
            "runs": self.runs,
            "data": self.data,
            "date": self.date,
        }

    @classmethod
    def from_dict(cls, d: dict, date: str = "") -> Outcome:
        """The inverse of :meth:`to_dict` (an experiment kept from an earlier report;
        ``date``: that report's, for summaries written before outcomes had their own)."""
        o = cls(d["key"], d["title"], d["status"], error=d.get("error"))
        o.elapsed = float(d.get("elapsed_s", 0.0))
        o.notes = list(d.get("notes", []))
        o.tables = [Table(t["title"], [Row(**r) for r in t["rows"]]) for t in d["tables"]]
        o.plots = [(q["caption"], q["path"]) for q in d.get("plots", [])]
        o.runs, o.data = dict(d.get("runs", {})), dict(d.get("data", {}))
        o.date = d.get("date") or date
        return o


# ----------------------------------------------------------------------------- formatting


def format_number(x: float | None, digits: int = 3) -> str:
    """``digits`` significant digits, plain notation for 1e-3 ≤ |x| < 1e5; ``n/a`` for
    None / NaN."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.{digits}g}" if abs(x) < 10**digits else f"{x:.0f}"
    return f"{x:.{digits - 1}e}"


def format_value(value: float | str | None, err: float | None = None) -> str:
    """``value ± err`` (the error to two significant digits) or the text as given."""
    if isinstance(value, str):
        return value
    out = format_number(value)
    if err is not None and math.isfinite(float(err)) and err > 0:
        out += f" ± {format_number(err, 2)}"
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row]) -> str:
    """A markdown table: quantity | ours | study | note (units with the values)."""
    lines = ["| quantity | ours | study | note |", "| --- | --- | --- | --- |"]
    for r in rows:
        ours = format_value(r.value, r.err)
        if r.unit and ours != "n/a":
            ours += f" {r.unit}"
        lines.append(
            "| " + " | ".join(_cell(x) for x in (r.quantity, ours, r.study or "—", r.note)) + " |"
        )
    return "\n".join(lines)


def render(outcomes: list[Outcome], meta: dict[str, Any]) -> str:
    """The whole markdown document (see :func:`write_report`)."""
    quick = bool(meta.get("quick"))
    out = ["# Reproducing the study with symbreak", ""]
    out.append(
        "Langer, Pozdnyakov, Ceriotti, *Probing the effects of broken symmetries in machine "
        "learning*, Mach. Learn.: Sci. Technol. 5, 04LT01 (2024), rerun with the shipped model "
        f"`{meta.get('model')}` through i-PI and the symbreak clients (`symbreak reproduce"
        f"{' --quick' if quick else ''}`)."
    )
    out.append("")
    if quick:
        out += [
            "> **Quick mode: a smoke test.** Tiny step counts, fewer cells and grids: the "
            "numbers below show that every experiment runs end to end, not what the "
            "physics is. Run `symbreak reproduce` (without `--quick`) for results.",
            "",
        ]
    out += [
        f"- generated {meta.get('date')} in {meta.get('elapsed', 0.0):.0f} s on "
        f"{meta.get('host', 'this machine')}, {meta.get('threads')} torch thread(s) per process",
        f"- model: `{meta.get('model')}` ({meta.get('model_accuracy', 'accuracy unknown')}); "
        "the study's PET was larger and more accurate "
        "(force MAE 16.6 meV/Å), so its numbers are a reference for the size and direction "
        "of the effects, not values to match",
        f"- study values from {SHORT_CITATION} (`symbreak.reproduce.study`); `—`: the "
        "study gives no number for it",
    ]
    kept = meta.get("kept") or []
    if kept:
        out.append(
            f"- experiment(s) {', '.join(str(k) for k in kept)} kept from an earlier run of the "
            "same mode and model (`--only` reran the others); each one's date is in the table"
        )
    out += ["", "| experiment | status | wall time |" + (" run on |" if kept else "")]
    out.append("| --- | --- | --- |" + (" --- |" if kept else ""))
    for o in outcomes:
        head = f"{o.number}. {o.title}"
        row = f"| [{head}](#{_anchor(head)}) | {o.status} | {o.elapsed:.0f} s |"
        out.append(row + (f" {o.date or '?'} |" if kept else ""))
    out.append("")
    compared = [
        Row(f"({o.number}) {r.quantity}", r.value, r.err, r.unit, r.study, r.note)
        for o in outcomes
        for t in o.tables
        for r in t.rows
        if _is_number(r.study)
    ]
    if compared:
        out += ["## Ours next to the study's", "", markdown_table(compared), ""]
    for o in outcomes:
        out += [f"## {o.number}. {o.title}", "", f"Status: **{o.status}** ({o.elapsed:.0f} s)."]
        if o.error:
            out += ["", "Error:", "", "```", o.error.rstrip(), "```"]
        out.append("")
        out += [f"- {n}" for n in o.notes]
        if o.notes:
            out.append("")
        for t in o.tables:
            out += [f"**{t.title}**", "", markdown_table(t.rows), ""]
        for caption, path in o.plots:
            out += [f"![{caption}]({path})", "", f"*{caption}*", ""]
        if o.runs:
            out += ["Runs (i-PI outputs and logs in these folders):", ""]
            for name, r in o.runs.items():
                steps = f"{r.get('steps_done')}/{r.get('steps_total')} steps"
                out.append(
                    f"- `{name}`: {r.get('status')}, {steps}, {r.get('elapsed_s', 0):.0f} s "
                    f"— `{r.get('rel_dir', r.get('run_dir'))}`"
                )
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading."""
    keep = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def _is_number(text: str) -> bool:
    """True when the study's entry is a value (starts with a number), not a remark."""
    head = text.split(" ", 1)[0] if text else ""
    try:
        float(head)
    except ValueError:
        return False
    return True


def kept_outcomes(out: Path, rerun: set[int], quick: bool, model_sha256: str) -> list[Outcome]:
    """The experiments of the report in ``out`` that are not in ``rerun``, if that report
    was made in the same mode with the same model file (same SHA-256: a retrained model
    shipped under the old name is another model; a report without the hash is not kept).
    Else none: a report never mixes them. Lets ``symbreak reproduce --only N`` update one
    experiment of a full report."""
    import json

    path = out / "reproduction" / "summary.json"
    if not path.is_file():
        return []
    try:
        previous = json.loads(path.read_text())
        meta = previous["meta"]
        if bool(meta.get("quick")) != quick or meta.get("model_sha256") != model_sha256:
            return []
        date = str(meta.get("date", ""))
        kept = [Outcome.from_dict(d, date) for d in previous["experiments"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # unreadable: rerun what was asked, report only that
    return [o for o in kept if int(o.number) not in rerun]


def write_report(out: Path, outcomes: list[Outcome], meta: dict[str, Any]) -> Path:
    """Write ``out/reproduction.md`` and ``out/reproduction/summary.json``; returns the
    markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), **meta}
    md = out / "reproduction.md"
    md.write_text(render(outcomes, meta))
    write_json(
        out / "reproduction" / "summary.json",
        {"meta": meta, "experiments": [o.to_dict() for o in outcomes]},
    )
    return md


def write_outcome(folder: Path, outcome: Outcome) -> Path:
    """One experiment's JSON summary, ``folder/summary.json``."""
    return write_json(folder / "summary.json", outcome.to_dict())


# ----------------------------------------------------------------------------- plots


def plot_overlay(
    path: str | Path,
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    *,
    logx: bool = False,
    logy: bool = False,
    marker: str = "",
) -> Path:
    """Several labelled curves (x, y) on one axis → PNG (the comparisons of runs)."""
    fig, ax = new_figure(size=(6.0, 3.8))
    for label, (x, y) in curves.items():
        ax.plot(np.asarray(x), np.asarray(y), marker=marker, lw=1.0, ms=4, label=label)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    return save_figure(fig, path)
