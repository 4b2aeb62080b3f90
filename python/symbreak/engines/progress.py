"""Progress of a launcher run, read from a properties output the launcher adds to i-PI.

The launcher's copy of an i-PI input gets one more ``<properties>`` output,
``<prefix>.sbprogress``, written and flushed every step (:func:`progress_columns`);
:class:`ProgressReader` follows that file as i-PI appends to it and
:class:`ProgressDisplay` shows it: a tqdm bar on a terminal, a line every few seconds
otherwise. Units: time in ps, temperature in K, energies in eV (as requested from i-PI).
"""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

PROGRESS_NAME = "sbprogress"  #: filename of the properties output added for the display


def progress_columns(motion_mode: str) -> str:
    """i-PI properties list of the progress output for a ``<motion mode=...>``."""
    if motion_mode == "dynamics":
        return (
            "[ step, time{picosecond}, temperature{kelvin}, conserved{electronvolt}, "
            "potential{electronvolt} ]"
        )
    return "[ step, potential{electronvolt} ]"


@dataclass
class ProgressRow:
    """One step of the progress output: i-PI's step index, its values by column name
    (``time`` ps, ``temperature`` K, ``conserved`` and ``potential`` eV), and when the
    launcher saw it."""

    step: int
    values: dict[str, float]
    wall: float  #: seconds since the launcher started when the row was seen


class ProgressReader:
    """Reads the ``sbprogress`` properties file as i-PI writes it (incrementally)."""

    def __init__(self, path_glob: str):
        self.path_glob = path_glob
        self.path: Path | None = None
        self.names: list[str] = []
        self.rows: list[ProgressRow] = []
        self._offset = 0
        self._partial = ""  # a line i-PI has not finished writing yet

    def poll(self, now: float) -> list[ProgressRow]:
        """Rows written since the last call (``now``: launcher seconds, stored in each)."""
        if self.path is None:
            found = sorted(glob.glob(self.path_glob))
            if not found:
                return []
            self.path = Path(found[0])
        try:
            with open(self.path) as fd:
                fd.seek(self._offset)
                chunk = fd.read()
                self._offset = fd.tell()
        except FileNotFoundError:
            return []
        text = self._partial + chunk
        lines = text.split("\n")
        self._partial = lines.pop()
        new = []
        for line in lines:
            if line.startswith("#"):  # "# column 1 --> step : ..." names the columns
                parts = line.split("-->")
                if len(parts) > 1:
                    self.names.append(parts[1].split(":")[0].strip().split("{")[0])
                continue
            fields = line.split()
            if not fields:
                continue
            try:
                vals = [float(x) for x in fields]
            except ValueError:
                continue
            row = ProgressRow(int(vals[0]), dict(zip(self.names, vals, strict=False)), now)
            self.rows.append(row)
            new.append(row)
        return new


class ProgressDisplay:
    """tqdm bar on a terminal, a line every ``interval`` s otherwise, or nothing.

    ``mode``: ``auto`` (bar on a terminal, else lines), ``bar``, ``lines`` or ``none``.
    """

    def __init__(self, total: int | None, mode: str, interval: float, stream: TextIO):
        self.total, self.interval, self.stream = total, interval, stream
        if mode == "auto":
            mode = "bar" if stream.isatty() else "lines"
        self.mode = mode
        self.bar = None
        self._last_line = -1e9
        if mode == "bar":
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="step", file=stream, dynamic_ncols=True)

    @staticmethod
    def describe(row: ProgressRow) -> str:
        """``t=... ps  T=... K  E_cons=... eV  E_pot=... eV`` (the columns present)."""
        v = row.values
        parts = []
        if "time" in v:
            parts.append(f"t={v['time']:.4f} ps")
        if "temperature" in v:
            parts.append(f"T={v['temperature']:.1f} K")
        if "conserved" in v:
            parts.append(f"E_cons={v['conserved']:.4f} eV")
        if "potential" in v:
            parts.append(f"E_pot={v['potential']:.4f} eV")
        return "  ".join(parts)

    def update(self, rows: list[ProgressRow], now: float) -> None:
        """Show the last of ``rows`` (new rows of this poll; ``now``: launcher seconds)."""
        if not rows or self.mode == "none":
            return
        last = rows[-1]
        if self.bar is not None:
            self.bar.n = last.step
            self.bar.set_postfix_str(self.describe(last), refresh=False)
            self.bar.refresh()
        elif now - self._last_line >= self.interval or (
            self.total is not None and last.step >= self.total
        ):
            self._last_line = now
            total = f"/{self.total}" if self.total else ""
            print(
                f"[{now:7.1f} s] step {last.step}{total}  {self.describe(last)}",
                file=self.stream,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
