"""Fuzzing the two readers of outside files (issue 11): the config loader and the
checkpoint reader. Seeded, a few hundred cases each, every one must end in either a
valid result or the reader's one clear error type (``ConfigError`` /
``CheckpointError``) -- never another exception, a crash or a hang.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time

import pytest
import torch
import yaml

from a2d2c.engine import CheckpointError, ConfigError, config_to_dict, load_config
from a2d2c.engine.checkpoint import (
    FORMAT,
    RESUME_KEYS,
    WEIGHTS_KEYS,
    load_checkpoint,
    save_checkpoint,
)
from a2d2c.engine.config import Config, validate_config

SECTIONS = {f.name: [g.name for g in dataclasses.fields(getattr(Config(), f.name))]
            for f in dataclasses.fields(Config)}


def _value(rng: random.Random, depth: int = 0):
    kind = rng.randrange(12 if depth < 2 else 9)
    return [
        lambda: rng.randint(-5, 10**6), lambda: rng.choice([0, 1, -1, 2**63, -(2**70)]),
        lambda: rng.uniform(-1e3, 1e3), lambda: rng.choice([math.inf, -math.inf, math.nan,
                                                            1e308, -0.0, 5e-324]),
        lambda: rng.choice(["", "auto", "cpu", "cuda:7", "../../x", "a\x00b", "é", "1e3",
                            "yes", "~", "null", "sgd", "step"]),
        lambda: None, lambda: rng.choice([True, False]),
        lambda: "x" * rng.randint(0, 300), lambda: rng.choice(["[", "{", "&a", "*a", "!!x"]),
        lambda: [_value(rng, depth + 1) for _ in range(rng.randint(0, 3))],
        lambda: {rng.choice(["a", "lr", "name", "_base_", "kwargs"]): _value(rng, depth + 1)
                 for _ in range(rng.randint(0, 3))},
        lambda: (rng.randint(0, 3), rng.random()),
    ][kind]()


def _random_config(rng: random.Random) -> object:
    """Mostly-plausible configs: real sections and keys with random values, plus noise."""
    r = rng.random()
    if r < 0.1:
        return _value(rng)  # not even a mapping
    data: dict = {}
    for sec in rng.sample(sorted(SECTIONS), rng.randint(0, len(SECTIONS))):
        keys = SECTIONS[sec] + (["nosuchkey"] if rng.random() < 0.2 else [])
        data[sec] = {k: _value(rng) for k in rng.sample(keys, rng.randint(0, len(keys)))}
        if rng.random() < 0.1:
            data[sec] = _value(rng)
    if rng.random() < 0.1:
        data[rng.choice(["nosuchsection", "_base_", 3, None])] = _value(rng)
    return data


def _text(rng: random.Random, obj: object) -> str:
    try:
        text = yaml.safe_dump(obj, allow_unicode=True)
    except yaml.YAMLError:
        text = repr(obj)
    if rng.random() < 0.3:  # damage it
        chars = list(text)
        for _ in range(rng.randint(1, 5)):
            if chars:
                chars[rng.randrange(len(chars))] = rng.choice(":-[]{}&*!|>'\"\t\n#%@`")
        text = "".join(chars)
    if rng.random() < 0.05:
        text = bytes(rng.randrange(256) for _ in range(rng.randint(0, 200))).decode("latin1")
    return text


def test_fuzz_config_loader(tmp_path):
    rng = random.Random(20261202)
    path = tmp_path / "c.yaml"
    outcomes = {"ok": 0, "error": 0}
    start = time.perf_counter()
    for case in range(300):
        obj = _random_config(rng)
        path.write_text(_text(rng, obj), encoding="utf-8", errors="surrogateescape")
        try:
            cfg = load_config(path)
        except ConfigError as e:
            msg = str(e)
            assert msg.strip() and len(msg) < 2000, (case, msg)  # says what, briefly
            outcomes["error"] += 1
            continue
        except Exception as e:  # pragma: no cover - the failure this test looks for
            pytest.fail(f"case {case}: {type(e).__name__}: {e}\n--- input:\n{path.read_text()}")
        # accepted: it must really be a valid config (round trip, validation holds)
        validate_config(cfg)
        assert config_to_dict(cfg)["optim"]["lr"] > 0
        outcomes["ok"] += 1
    assert outcomes["error"] > 100  # the fuzzer does reach the error paths
    assert time.perf_counter() - start < 60  # no hang


def test_fuzz_config_overrides():
    rng = random.Random(7)
    keys = [f"--{s}.{k}" for s, ks in SECTIONS.items() for k in ks] + ["--x", "--a.b.c", "--"]
    for case in range(300):
        argv = []
        for _ in range(rng.randint(1, 4)):
            tok = rng.choice(keys)
            val = _value(rng)
            raw = yaml.safe_dump(val).strip() if rng.random() < 0.8 else str(val)
            argv += [f"{tok}={raw}"] if rng.random() < 0.3 else [tok, raw]
        if rng.random() < 0.1:
            argv.append(rng.choice(["oops", "-x", "--"]))
        try:
            load_config(None, argv)
        except ConfigError:
            pass
        except Exception as e:  # pragma: no cover
            pytest.fail(f"case {case}: {argv}: {type(e).__name__}: {e}")


# ------------------------------------------------------------------------ checkpoints
@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    state = {"format": FORMAT, "version": 1, "model_name": "m",
             "model": {"w": torch.arange(6.0).view(2, 3), "b": torch.zeros(2)},
             "config": {"model": {"name": "m", "kwargs": {}}}, "optimizer": {"state": {}},
             "lr_scheduler": {}, "temperature": {}, "epoch": 1, "step_in_epoch": 0,
             "global_step": 4, "rng": {"python": [3, [1, 2], None]}}
    path = save_checkpoint(state, d / "last.pt")
    return path.read_bytes()


def _check_file(path, case: str) -> None:
    try:
        state = load_checkpoint(path, require=RESUME_KEYS)
    except CheckpointError as e:
        assert str(e).startswith(("corrupt checkpoint", f"{path} is not an a2d2c")), str(e)
        return
    except Exception as e:  # pragma: no cover
        pytest.fail(f"{case}: {type(e).__name__}: {e}")
    assert set(RESUME_KEYS) <= set(state)  # accepted only when complete


def _check_read(path, data: bytes, case: str) -> None:
    path.write_bytes(data)
    _check_file(path, case)


def test_fuzz_checkpoint_truncated_at_every_offset(small_checkpoint, tmp_path):
    path = tmp_path / "last.pt"
    path.write_bytes(small_checkpoint)
    start = time.perf_counter()
    # every length from the full file down to 0 bytes (truncating in place: rewriting
    # the file thousands of times is slow on this machine's /tmp)
    for n in range(len(small_checkpoint) - 1, -1, -1):
        os.truncate(path, n)
        _check_file(path, f"truncated to {n} of {len(small_checkpoint)} bytes")
    _check_read(path, small_checkpoint, "intact")
    assert load_checkpoint(path, require=RESUME_KEYS)["global_step"] == 4
    assert time.perf_counter() - start < 60


def test_fuzz_checkpoint_random_bytes_and_bit_flips(small_checkpoint, tmp_path):
    rng = random.Random(11)
    path = tmp_path / "last.pt"
    (tmp_path / "last.prev.pt").write_bytes(small_checkpoint)
    for case in range(150):
        _check_read(path, bytes(rng.randrange(256) for _ in range(rng.randint(0, 600))),
                    f"random {case}")
    for case in range(250):
        data = bytearray(small_checkpoint)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        _check_read(path, bytes(data), f"bit flips {case}")
    # a bad last.pt always points at the intact previous one
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match=r"the previous checkpoint is .*last\.prev\.pt"):
        load_checkpoint(path, require=WEIGHTS_KEYS)
