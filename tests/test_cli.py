"""The dispatcher: unknown commands, version, one-line errors with exit code 2."""
from __future__ import annotations

import subprocess
import sys

import pytest

from gradscope import __version__
from gradscope import cli


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, "-m", "gradscope", "no-such-command"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "invalid choice" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_value_error_from_a_command_becomes_one_line_and_exit_2(capsys, monkeypatch):
    import types

    fake = types.ModuleType("gradscope_fake_cmd")
    fake.__doc__ = "A fake command."
    fake.configure = lambda parser: parser.add_argument("--x", default="a")

    def execute(args):
        raise ValueError("unknown x 'b'; valid choices: 'a'\nsecond line must not show")

    fake.execute = execute
    monkeypatch.setitem(sys.modules, "gradscope_fake_cmd", fake)
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", ("gradscope_fake_cmd", "fake"))
    assert cli.main(["fake", "--x", "b"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "gradscope fake: error: unknown x 'b'; valid choices: 'a'"


def test_every_registered_command_has_help():
    for name in cli.SUBCOMMANDS:
        proc = subprocess.run([sys.executable, "-m", "gradscope", name, "--help"],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (name, proc.stderr[-2000:])
        assert "usage: gradscope " + name in proc.stdout
