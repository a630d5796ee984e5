"""``a2d2c inspect`` (issue 16): the diagnostics table and PNG of a trained checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _engine_helpers import tiny_config
from a2d2c.cli import main
from a2d2c.engine import fit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inspect")
    fit(tiny_config(out, train={"epochs": 1}))
    return out / "last.pt"


def test_inspect_prints_table_and_writes_png_and_json(checkpoint: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    pytest.importorskip("matplotlib")
    png, js = tmp_path / "a.png", tmp_path / "a.json"
    rc = main(["inspect", "--checkpoint", str(checkpoint), "--samples", "12", "--png", str(png),
               "--json", str(js), "--train.threads", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "H/logK" in out and "A2D2Conv2d" in out and "first 12 images" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(js.read_text())
    assert rows and all(r["samples"] == 12 and r["head"] == "pi" for r in rows)
    assert all(0 < r["entropy_ratio"] <= 1 + 1e-9 for r in rows)


def test_inspect_errors(checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["inspect", "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "a2d2c inspect: error:" in capsys.readouterr().err
    assert main(["inspect", "--checkpoint", str(checkpoint), "--samples", "0"]) == 2
