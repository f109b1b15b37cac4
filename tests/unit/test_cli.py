"""The CLI explains itself: ``medray --help`` and every subcommand's ``--help``."""

import subprocess
import sys

import pytest

from medray.cli import COMMANDS, main


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_help(name, capsys):
    with pytest.raises(SystemExit) as info:
        main([name, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"medray {name}" in out and len(out) > 200


def test_config_error_is_reported_not_raised(capsys):
    assert main(["synth", "ct", "no_such_field=1"]) == 2
    assert "unknown field 'no_such_field'" in capsys.readouterr().err


def test_console_script_installed():
    out = subprocess.run([sys.executable, "-m", "medray.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and "medray 0.1.0" in out.stdout
