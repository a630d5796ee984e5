"""The CLI's one error path and files from outside (issue 11, items 2, 6, 7, 9).

Every anticipated error prints one line ``a2d2c <command>: error: ...`` and exits 2
(run-time failures: 1); no traceback reaches the user unless ``--debug`` /
``A2D2C_DEBUG=1`` asks for it. Commands run in-process through ``a2d2c.cli.main`` (with
capsys), two through a subprocess.
"""

from __future__ import annotations

import errno
import gzip
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from _engine_helpers import tiny_config, write_cifar100
from a2d2c.cli import COMMANDS
from a2d2c.cli import main as cli_main
from a2d2c.engine import config_to_dict, fit, save_checkpoint
from a2d2c.engine.checkpoint import FORMAT, remove_stale_temp_files

REPO = Path(__file__).resolve().parents[1]


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    """Exit code and stderr of one in-process CLI call (argparse's SystemExit included)."""
    try:
        rc = cli_main(argv)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    err = capsys.readouterr().err
    return rc, err


def _assert_one_line(rc: int, err: str, command: str, expect: str | None = None,
                     code: int = 2) -> None:
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert rc == code, (rc, err)
    assert last.startswith(f"a2d2c {command}: error: "), err
    if expect is not None:
        assert expect in last, last


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run (last.pt, last.prev.pt, best.pt, config.yaml)."""
    out = tmp_path_factory.mktemp("run") / "r"
    fit(tiny_config(out))
    return out


def _yaml(path: Path, cfg) -> Path:
    path.write_text(yaml.safe_dump(config_to_dict(cfg)))
    return path


def _png(path: Path) -> Path:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)
    return path


# ----------------------------------------------------------------- item 2: empty files
def test_zero_byte_checkpoint_is_one_clear_error_naming_the_previous(run_dir, tmp_path,
                                                                     capsys):
    d = tmp_path / "copy"
    d.mkdir()
    (d / "last.prev.pt").write_bytes((run_dir / "last.pt").read_bytes())
    (d / "last.pt").write_bytes(b"")
    empty = str(d / "last.pt")
    for command, argv in (
            ("train", ["train", "--resume", empty]),
            ("eval", ["eval", "--checkpoint", empty]),
            ("visualize", ["visualize", "--checkpoint", empty, "--image",
                           str(_png(tmp_path / "x.png")), "--out-dir", str(tmp_path / "v")])):
        rc, err = _run(capsys, argv)
        _assert_one_line(rc, err, command, f"corrupt checkpoint {empty}: the file is empty")
        assert f"the previous checkpoint is {d / 'last.prev.pt'}" in err
    # and the previous one is indeed intact: resuming from it works (nothing left to do)
    rc, err = _run(capsys, ["train", "--resume", str(d / "last.prev.pt"),
                            "--train.output_dir", str(tmp_path / "cont")])
    assert rc == 0, err


@pytest.mark.parametrize("drop", ["model", "config", "optimizer", "epoch", "rng"])
def test_crafted_checkpoint_missing_a_key(run_dir, tmp_path, capsys, drop):
    state = torch.load(run_dir / "last.pt", weights_only=True)
    del state[drop]
    path = tmp_path / "crafted.pt"
    torch.save(state, path)
    rc, err = _run(capsys, ["train", "--resume", str(path), "--train.output_dir",
                            str(tmp_path / "o")])
    _assert_one_line(rc, err, "train", f"it has no {drop!r} entry")
    if drop in ("model", "config"):
        rc, err = _run(capsys, ["eval", "--checkpoint", str(path)])
        _assert_one_line(rc, err, "eval", f"it has no {drop!r} entry")


def test_crafted_checkpoint_with_wrong_types(run_dir, tmp_path, capsys):
    state = torch.load(run_dir / "last.pt", weights_only=True)
    for key, bad in (("epoch", "three"), ("model", {"fc.weight": 3}), ("optimizer", {})):
        crafted = dict(state, **{key: bad})
        path = tmp_path / f"crafted_{key}.pt"
        torch.save(crafted, path)
        rc, err = _run(capsys, ["train", "--resume", str(path), "--train.output_dir",
                                str(tmp_path / "o")])
        _assert_one_line(rc, err, "train")


# ----------------------------------------------------- item 9: resume with other options
def test_resume_with_changed_model_options_is_refused(run_dir, tmp_path, capsys):
    last = str(run_dir / "last.pt")
    out = str(tmp_path / "o")
    rc, err = _run(capsys, ["train", "--resume", last, "--train.output_dir", out,
                            "--train.epochs", "3", "--model.kwargs.conv_kwargs.num_points", "5"])
    _assert_one_line(rc, err, "train", "model.kwargs.conv_kwargs.num_points: 8 -> 5")
    assert "--resume-allow-changed" in err
    rc, err = _run(capsys, ["train", "--resume", last, "--train.output_dir", out,
                            "--train.epochs", "3", "--model.kwargs.conv_kwargs.num_points", "5",
                            "--resume-allow-changed"])
    assert rc == 0, err


def test_stale_temp_files_of_dead_writers_are_removed(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".last.pt.tmp{dead_pid}"
    live = tmp_path / f".last.pt.tmp{os.getppid()}"  # our parent is alive
    other = tmp_path / "notes.tmp123"  # not one of ours: no leading dot
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    save_checkpoint({"format": FORMAT, "step": 1}, tmp_path / "last.pt")
    assert not stale.exists() and live.exists() and other.exists()
    assert remove_stale_temp_files(tmp_path) == []


# ------------------------------------------------------------- item 6: the error path
def test_filesystem_errors_are_one_line(run_dir, tmp_path, capsys, monkeypatch):
    cfg = _yaml(tmp_path / "c.yaml", tiny_config(tmp_path / "unused", train={"epochs": 1}))
    afile = tmp_path / "afile"
    afile.write_text("x")
    # output folder that is a file, or below a file
    for out, expect in ((afile, "File exists"), (afile / "sub", "Not a directory")):
        rc, err = _run(capsys, ["train", "--config", str(cfg), "--train.output_dir", str(out)])
        _assert_one_line(rc, err, "train", expect)
    # a read-only location (simulated: the tests may run as root)
    real_mkdir = Path.mkdir

    def readonly(self, *a, **k):
        if "ro" in self.parts:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_mkdir(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", readonly)
    rc, err = _run(capsys, ["train", "--config", str(cfg), "--train.output_dir",
                            str(tmp_path / "ro" / "x")])
    _assert_one_line(rc, err, "train", "Permission denied")
    monkeypatch.setattr(Path, "mkdir", real_mkdir)
    # a full disk while checkpointing: one line, the previous checkpoint survives
    out = tmp_path / "full"
    rc, err = _run(capsys, ["train", "--config", str(cfg), "--train.output_dir", str(out)])
    assert rc == 0, err
    before = (out / "last.pt").read_bytes()

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", no_space)
    rc, err = _run(capsys, ["train", "--resume", str(out / "last.pt"), "--train.epochs", "2"])
    _assert_one_line(rc, err, "train", "No space left on device")
    assert "free some disk space" in err and str(out / "last.pt") in err
    assert (out / "last.pt").read_bytes() == before
    assert not [p for p in out.iterdir() if ".tmp" in p.name]


def test_config_device_and_model_errors_are_one_line(tmp_path, capsys):
    nowhere = str(tmp_path / "nodata")
    table = [
        (["--temperature.start", ".inf"], "finite"),
        (["--temperature.end", "-.inf"], "finite"),
        (["--model.kwargs.num_kernels", "0", "--data.root", nowhere], "num_kernels (K) must be"),
        (["--model.kwargs.conv_kwargs.num_pointz", "3", "--data.root", nowhere], "num_pointz"),
        (["--model.kwargs.conv_kwargs.sampling", "sideways", "--data.root", nowhere],
         "sampling must be one of"),
        (["--optim.lr", "-1"], "optim.lr"),
        (["--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
    ]
    if not torch.cuda.is_available():
        table.append((["--train.device", "cuda"], "CUDA is not available"))
    for argv, expect in table:
        rc, err = _run(capsys, ["train", *argv])
        _assert_one_line(rc, err, "train", expect)
        assert "Fashion-MNIST not found" not in err  # model errors come before the data


def test_corrupt_data_files_are_one_line(tmp_path, capsys):
    out = str(tmp_path / "o")
    # Fashion-MNIST: a truncated gzip, a file that is not IDX
    fm = tmp_path / "fm"
    fm.mkdir()
    good = gzip.compress(bytes([0, 0, 8, 3]) + (2).to_bytes(4, "big") * 3 + bytes(8))
    for split in ("train", "t10k"):
        (fm / f"{split}-images-idx3-ubyte.gz").write_bytes(good[: len(good) // 2])
        (fm / f"{split}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"not idx"))
    rc, err = _run(capsys, ["train", "--data.root", str(fm), "--train.output_dir", out])
    _assert_one_line(rc, err, "train", "is corrupt")
    # CIFAR-100: random bytes, and a crafted pickle that would run code
    root = tmp_path / "c100"
    write_cifar100(root)
    split = root / "cifar-100-python" / "train"
    split.write_bytes(os.urandom(200))
    argv = ["train", "--data.name", "cifar100", "--data.root", str(root), "--train.output_dir",
            out]
    rc, err = _run(capsys, argv)
    _assert_one_line(rc, err, "train", "is not a readable CIFAR-100 file")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    split.write_bytes(pickle.dumps({"data": Evil(), "fine_labels": [0]}, protocol=2))
    rc, err = _run(capsys, argv)
    _assert_one_line(rc, err, "train", "refused global")
    assert not marker.exists()
    # an image folder with a file that is not a JPEG
    from _engine_helpers import write_image_folder

    imgs = tmp_path / "in"
    write_image_folder(imgs)
    victim = next(imgs.rglob("*.JPEG"))
    victim.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    rc, err = _run(capsys, ["visualize", "--model", "resnet18_a2d2c", "--image", str(victim),
                            "--out-dir", str(tmp_path / "v")])
    _assert_one_line(rc, err, "visualize")


def test_detect_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {nosuchkey: 1}\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    afile = tmp_path / "afile"
    afile.write_text("x")
    for argv, expect in (
            (["train", "--config", str(tmp_path / "missing.yaml")], "missing.yaml"),
            (["train", "--config", str(bad)], "nosuchkey"),
            (["eval", "--checkpoint", str(empty)], "corrupt checkpoint"),
            (["eval", "--checkpoint", str(tmp_path / "none.pt")], "none.pt"),
            (["make-shapes", "--out", str(afile)], str(afile))):
        rc, err = _run(capsys, ["detect", *argv])
        _assert_one_line(rc, err, "detect", expect)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line_in_every_command(tmp_path, capsys):
    png = str(_png(tmp_path / "x.png"))
    for command, argv in (
            ("train", ["--train.device", "cuda"]),
            ("visualize", ["--model", "resnet18_a2d2c", "--image", png, "--device", "cuda",
                           "--out-dir", str(tmp_path / "v")]),
            ("visualize", ["--model", "resnet18_a2d2c", "--image", png, "--device", "tpu9",
                           "--out-dir", str(tmp_path / "v")]),
            ("bench", ["--device", "cuda", "--cases", "nosuchcase"])):
        rc, err = _run(capsys, [command, *argv])
        _assert_one_line(rc, err, command)


def test_restricted_unpickler_still_reads_cifar(tmp_path):
    from a2d2c.data.datasets import CIFAR100

    arrays = write_cifar100(tmp_path)
    ds = CIFAR100(tmp_path, train=True)
    assert len(ds) == len(arrays["train"]) and ds.classes[3] == "class3"
    first = arrays["train"][0].reshape(3, 32, 32)
    assert torch.equal(ds.images[0], torch.from_numpy(first))


def test_study_labels_cannot_escape_results(tmp_path, capsys):
    from a2d2c.study.runner import StudyError, load_study

    recipe = _yaml(tmp_path / "r.yaml", tiny_config(tmp_path / "unused"))
    for label in ("../../x", "a/b", "..", ".hidden", "", "x" * 101, 3):
        spec = tmp_path / "s.yaml"
        spec.write_text(yaml.safe_dump({"recipe": recipe.name, "baseline": label,
                                        "variants": {label: {}}}))
        with pytest.raises(StudyError, match="variant label"):
            load_study(spec)
        rc, err = _run(capsys, ["study", str(spec), "--results", str(tmp_path / "res")])
        _assert_one_line(rc, err, "study", "variant label")
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------- the walker (all commands)
#: Bad arguments per command; every registered command gets at least the generic ones.
BAD_ARGS: dict[str, list[list[str]]] = {
    "train": [["--config", "/nonexistent.yaml"], ["--data.nosuchkey", "1"],
              ["--resume", "/nonexistent.pt"], ["--optim.momentum", "1.5"]],
    "eval": [["--checkpoint", "/nonexistent.pt"], ["--checkpoint", "/"]],
    "visualize": [["--checkpoint", "/nonexistent.pt", "--image", "/nonexistent.png"],
                  ["--model", "nosuchmodel", "--image", "/nonexistent.png"]],
    "detect": [["train", "--config", "/nonexistent.yaml"], ["eval", "--checkpoint", "/nope.pt"]],
    "study": [["nosuchstudy"], ["main", "--only", "nosuchvariant"]],
    "profile": [["nosuchmodel"], ["resnet18", "--conv", "nosuchconv"],
                ["resnet18", "--input-size", "3", "0", "0"], []],
    "configs": [["--show", "nosuchrecipe"]],
    "models": [["zzznomatch"]],
    "bench": [["--cases", "nosuchcase"], ["--threads", "0"], ["--device", "cuda:99"]],
    "demo": [["--num-kernels", "0"], ["--num-points", "-3"]],
}
GENERIC = [["--no-such-option"], ["--config"]]


def _walk_cases() -> list[tuple[str, list[str]]]:
    return [(cmd, argv) for cmd in COMMANDS for argv in BAD_ARGS.get(cmd, []) + GENERIC]


@pytest.mark.parametrize(("command", "argv"), _walk_cases(),
                         ids=[f"{c}:{' '.join(a)}" for c, a in _walk_cases()])
def test_walker_no_traceback_reaches_the_user(command, argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing a bad call writes lands in the repository
    rc, err = _run(capsys, [command, *argv])
    assert rc != 0
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert last.startswith(f"a2d2c {command}"), err


def test_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    from a2d2c.engine import CheckpointError

    with pytest.raises(CheckpointError):
        cli_main(["--debug", "eval", "--checkpoint", str(empty)])
    with pytest.raises(CheckpointError):
        cli_main(["eval", "--checkpoint", str(empty), "--debug"])
    monkeypatch.setenv("A2D2C_DEBUG", "1")
    with pytest.raises(CheckpointError):
        cli_main(["eval", "--checkpoint", str(empty)])


@pytest.mark.slow  # two interpreter starts (torch import): ~10 s each on a busy 2-core box
def test_subprocess_one_line_and_debug_traceback(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "A2D2C_DEBUG"}
    env["PYTHONPATH"] = str(REPO / "src")
    cmd = [sys.executable, "-m", "a2d2c", "eval", "--checkpoint", str(empty)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [
        f"a2d2c eval: error: corrupt checkpoint {empty}: the file is empty (0 bytes)"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                         env=dict(env, A2D2C_DEBUG="1"))
    assert res.returncode != 0 and "Traceback" in res.stderr
