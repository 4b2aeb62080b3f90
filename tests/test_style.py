"""Code style, checked by the test suite (and so by CI, which runs the README's test command).

Python: ``ruff check`` and ``ruff format --check`` (the settings in pyproject.toml) over the
package, the tests, the benchmarks and the scripts. C++: ``clang-format --dry-run -Werror``
(the repository's .clang-format) over every C++ file under cpp/. Both tools are pinned in
the ``test`` extras (``scripts/setup.sh`` installs them); a test is skipped, saying so, only
where its tool is not installed. Fix a failure with ``ruff check --fix``, ``ruff format`` and
``clang-format -i FILE``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHON_DIRS = ("python", "tests", "benchmarks", "scripts")
CPP_SUFFIXES = {".c", ".cc", ".cpp", ".cxx", ".h", ".hh", ".hpp", ".hxx"}
TIMEOUT = 120  # s, per tool run


def tool(name: str) -> str:
    """Path of the executable ``name``: the one installed with this Python (the venv's, even
    when it is not activated) first, then the PATH; skips the test when there is none."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        pytest.skip(
            f"{name} is not installed (pinned in pyproject.toml's test extras, which "
            "bash scripts/setup.sh installs)"
        )
    return found


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT, stdin=subprocess.DEVNULL
    )


def check(what: str, out: subprocess.CompletedProcess, fix: str) -> None:
    if out.returncode != 0:
        text = (out.stdout + out.stderr).strip()
        if len(text) > 8000:
            text = text[:8000] + "\n[...]"
        pytest.fail(f"{what} found problems (fix: {fix}):\n{text}", pytrace=False)


def test_ruff_check():
    out = run([tool("ruff"), "check", "--no-cache", "--output-format", "concise", *PYTHON_DIRS])
    check("ruff check", out, "ruff check --fix")


def test_ruff_format():
    out = run([tool("ruff"), "format", "--check", "--no-cache", *PYTHON_DIRS])
    check("ruff format --check", out, "ruff format")


def cpp_files() -> list[Path]:
    return sorted(
        p for p in (REPO / "cpp").rglob("*") if p.is_file() and p.suffix.lower() in CPP_SUFFIXES
    )


def test_cpp_files_found():
    assert cpp_files(), "no C++ files under cpp/ (the style check below would check nothing)"


def test_clang_format():
    files = [str(p.relative_to(REPO)) for p in cpp_files()]
    out = run([tool("clang-format"), "--dry-run", "-Werror", *files])
    check("clang-format", out, "clang-format -i FILE")
