"""Every ```python block of README.md and docs/*.md runs (each on its own, from a fresh
folder). A block whose first line is ``# doc-test: skip`` is skipped (downloads, GPUs)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
SKIP = "# doc-test: skip"


def _blocks() -> list:
    out = []
    for path in DOCS:
        text = path.read_text()
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            out.append(pytest.param(path, m.group(1), id=f"{path.relative_to(ROOT)}:{line}"))
    return out


BLOCKS = _blocks()


def test_the_docs_have_code_to_run():
    files = {p.name for p in DOCS}
    assert "README.md" in files and len(files) > 5
    assert sum(1 for b in BLOCKS if b.values[0].name == "README.md") >= 3


@pytest.mark.parametrize(("path", "code"), BLOCKS)
def test_python_block_runs(path, code, tmp_path, monkeypatch):
    if code.lstrip().startswith(SKIP):
        pytest.skip(f"marked {SKIP!r}")
    monkeypatch.chdir(tmp_path)  # runs/ and other outputs land here, not in the checkout
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exec(compile(code, f"{path.name} block", "exec"), {"__name__": "__doc_block__"})
    finally:
        torch.set_num_threads(threads)


LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_docs_stand_alone(path):
    """Relative links resolve inside the repository; nothing points outside it."""
    text = path.read_text()
    for target in LINK.findall(text):
        if "://" in target or target.startswith("mailto:"):
            continue
        resolved = (path.parent / target).resolve()
        assert resolved.is_relative_to(ROOT) and resolved.exists(), f"{path.name}: {target}"
    for outside in ("../shared", "/work/", "SPEC §", "SPEC.md", "shared/STUDIES"):
        assert outside not in text, f"{path.name} refers to {outside!r}, outside the repository"


def test_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    lines = text.splitlines()
    assert len(lines) <= 150
    assert lines[3].startswith("bash scripts/setup.sh && a2d2c train")
    assert lines[4].startswith("python3 -m pytest -q")
