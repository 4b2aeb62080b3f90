"""The ``symbreak`` command line: every subcommand registers itself the same way, help
works without torch, exit codes come from one table, and the train command line is apart
from the training code. Subprocesses are bounded in time."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from symbreak import cli, exit_codes

PACKAGE = Path(cli.__file__).resolve().parent
COMMANDS = {
    "train",
    "export",
    "serve",
    "control",
    "ipi-pes-path",
    "run",
    "demo",
    "lammps-plugin",
    "probe",
    "reproduce",
}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The subcommand parsers of ``parser`` by name (empty if it has none)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _python(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_every_module_registers_its_subcommands_with_a_handler():
    seen: dict[str, str] = {}
    for name in cli.SUBCOMMAND_MODULES:
        module = importlib.import_module(f"symbreak.{name}")
        parser = argparse.ArgumentParser(prog="symbreak")
        module.register(parser.add_subparsers(dest="command"))
        added = _subcommands(parser)
        assert added, f"{name} registered nothing"
        for command, sub in added.items():
            assert command not in seen, f"{command}: registered by {seen[command]} and {name}"
            seen[command] = name
            nested = _subcommands(sub) or {command: sub}  # probe: one parser per analysis
            for leaf, p in nested.items():
                assert callable(p.get_default("func")), f"{leaf} ({name}) sets no func"
    assert set(seen) == COMMANDS
    assert set(_subcommands(cli.build_parser())) == COMMANDS


def test_run_help_shows_the_exit_code_table():
    run = _subcommands(cli.build_parser())["run"]
    assert run.epilog == exit_codes.RUN_HELP
    assert "--steps" in run.format_help() and exit_codes.RUN_HELP in run.format_help()


@pytest.mark.timeout(120)
def test_help_of_every_command_runs_without_torch():
    """``symbreak --help`` and each ``symbreak X --help`` exit 0 and never import torch
    (the CLI stays fast)."""
    code = (
        "import sys\nfrom symbreak.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert e.code in (0, None), e\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok')"
    )
    for args in ([], ["--help"], ["run", "--help"], ["train", "--help"], ["probe", "--help"]):
        out = _python("-c", code, *args)
        assert out.returncode == 0 and out.stdout.strip().endswith("ok"), (args, out.stderr)


def test_old_entry_point_of_the_launcher_still_runs():
    """``python -m symbreak.engines.launcher run|demo`` (scripts/demo.sh) = run_cli."""
    out = _python("-m", "symbreak.engines.launcher", "demo", "--help")
    assert out.returncode == 0 and "--switch-at" in out.stdout, out.stderr
    out = _python("-m", "symbreak.engines.run_cli", "run", "--help")
    assert out.returncode == 0 and "exit codes:" in out.stdout, out.stderr


def test_train_usage_errors_return_the_usage_code(capsys):
    argv = ["train", "--data", "x.xyz", "--new-schedule"]
    assert cli.main(argv) == exit_codes.USAGE
    assert "--new-schedule" in capsys.readouterr().err
    assert cli.main(["train", "--data", "x.xyz", "--model-config", "{"]) == exit_codes.USAGE
    assert "--model-config is not JSON" in capsys.readouterr().err


def _imports(path: Path) -> set[str]:
    """Module and imported names of every import statement in ``path``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_training_config_and_training_do_not_import_each_other():
    assert not any("training" in m for m in _imports(PACKAGE / "training_config.py"))
    assert "training_config" in _imports(PACKAGE / "training.py")
    assert "training_cli" not in _imports(PACKAGE / "training.py")


def test_launcher_modules_define_no_exit_codes_or_socket_constants_of_their_own():
    for name in ("launcher", "run_cli", "ipi_xml", "processes", "progress", "clients", "demo"):
        text = (PACKAGE / "engines" / f"{name}.py").read_text()
        assert "EXIT_" not in text, name
        assert '"/tmp/ipi_"' not in text and "symbreak_ctl_" not in text, name


def test_control_refuses_a_bad_policy_before_contacting_anyone(capsys) -> None:
    """Issue 23: `control --average random --seed -1` replied ok and the run died later."""
    from symbreak import exit_codes
    from symbreak.cli import main

    args = ["control", "--address", "no-such-run", "--socket-prefix", "/tmp/sb_none_"]
    assert main([*args, "--average", "random", "--seed", "-1"]) == exit_codes.USAGE
    assert "seed must be an integer" in capsys.readouterr().err
    assert main([*args, "--average", "legendre:100"]) == exit_codes.USAGE
    assert "+max=3960100" in capsys.readouterr().err
    assert main([*args, "--average", "lebedev:3"]) == exit_codes.CONTROL_FAILED  # nobody there
