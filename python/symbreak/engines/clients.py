"""The ``symbreak serve`` clients of a launcher run: what each one is started with.

A client is ``python -m symbreak serve --model M --template S --address A ...`` where
``S`` is the initial structure of the input (i-PI does not send atomic species),
``--no-pbc`` for an ``<ffsocket pbc='false'>`` (gas phase), and the averaging comes
through i-PI's INIT from each ``<ffsocket>``'s ``<parameters>``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .ipi_xml import IPIInput, LaunchError, SocketSpec

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"


def model_arg(model: str) -> str:
    """The model as the clients get it: absolute path for a file, else a shipped name
    (checked here without importing torch, so that a typo fails before anything starts)."""
    p = Path(model)
    if p.is_file():
        return str(p.resolve())
    if (SHIPPED_MODELS / f"{model}.pt").is_file():
        return model
    have = sorted(q.stem for q in SHIPPED_MODELS.glob("*.pt"))
    raise LaunchError(
        f"model '{model}' not found: no such file and no shipped model of that name "
        f"(shipped: {', '.join(have) or 'none yet'}); pass --model FILE.pt"
    )


def species_template(inp: IPIInput, run_dir: Path, override: str | Path | None = None) -> Path:
    """A file ``symbreak serve --template`` can read, with the atoms in i-PI's order.

    The initial structure itself when ASE reads it (xyz, extended xyz, pdb, ...);
    otherwise the species are read with i-PI's own reader and written to
    ``run_dir/species.xyz``.
    """
    if override is not None:
        path = Path(override).resolve()
        if not path.is_file():
            raise LaunchError(f"template structure file '{path}' does not exist")
        return path
    if inp.structure is None:
        raise LaunchError(
            f"{inp.path}: no <initialize><file> with the initial structure: i-PI does not "
            "send atomic species, so give them with --template FILE"
        )
    if not inp.structure.is_file():
        raise LaunchError(
            f"{inp.path}: the initial structure file '{inp.structure}' "
            "(<initialize><file>) does not exist"
        )
    if inp.structure_mode == "chk":
        raise LaunchError(
            f"{inp.path}: the initial structure is an i-PI checkpoint ({inp.structure}); "
            "give the species with --template FILE"
        )
    import ase.io

    try:
        ase.io.read(str(inp.structure), 0)
        return inp.structure
    except Exception:  # noqa: BLE001 - fall back to i-PI's reader below
        pass
    try:
        from ipi.utils.io import read_file

        with open(inp.structure) as fd:
            names = list(read_file(inp.structure_mode, fd)["atoms"].names)
    except Exception as err:  # noqa: BLE001
        raise LaunchError(
            f"cannot read the atomic species from '{inp.structure}' "
            f"(mode '{inp.structure_mode}'): {err}; give them with --template FILE"
        ) from None
    out = run_dir / "species.xyz"
    lines = [str(len(names)), "species of the i-PI input, in i-PI's order"]
    lines += [f"{n} 0.0 0.0 0.0" for n in names]
    out.write_text("\n".join(lines) + "\n")
    return out


def child_env() -> dict[str, str]:
    """The clients must import this very symbreak, even when it is not installed."""
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if src not in paths:
        env["PYTHONPATH"] = os.pathsep.join([src, *paths])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def default_threads(n_clients: int) -> int:
    """Torch threads per client: the idle cores shared out, at least 1.

    Cores already busy (1-minute load average) are left alone: on a loaded machine extra
    torch threads compete for the same cores and slow every call down several times."""
    cores = os.cpu_count() or 1
    try:
        idle = cores - os.getloadavg()[0]
    except OSError:
        idle = cores
    return max(1, min(cores, int(idle + 0.5)) // max(1, n_clients))


def client_command(
    s: SocketSpec,
    model: str,
    template: Path,
    threads: int,
    *,
    connect_timeout: float,
    extra_args: list[str] | None = None,
) -> list[str]:
    """The ``symbreak serve`` command line for one client of socket ``s``
    (``connect_timeout`` in s; ``extra_args``: e.g. the ``--average`` options)."""
    cmd = [sys.executable, "-m", "symbreak", "serve", "--model", model]
    cmd += ["--template", str(template), "--address", s.address]
    if s.mode == "inet":
        cmd += ["--inet", "--host", s.host, "--port", str(s.port)]
    cmd += ["--socket-prefix", s.prefix, "--threads", str(threads)]
    cmd += ["--connect-timeout", f"{connect_timeout:g}"]
    if not s.pbc:
        cmd.append("--no-pbc")
    return cmd + list(extra_args or [])
