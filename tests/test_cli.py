"""The command line: dispatch, help, and the demo."""

from __future__ import annotations

import subprocess
import sys

import pytest

from a2d2c.cli import main


def test_demo_runs_and_reports(capsys):
    assert main(["demo", "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "deterministic: True" in out
    assert "converted resnet18: 16 A2D2Conv2d layers" in out


def test_unknown_command_is_an_error():
    with pytest.raises(SystemExit) as exc:
        main(["trian"])
    assert exc.value.code == 2


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "a2d2c", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "demo" in out
