"""Datasets and loaders: on-disk formats, transforms, the resumable sampler, errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from _engine_helpers import write_cifar100, write_image_folder
from a2d2c.data import (
    FASHION_MNIST_DIRS,
    DatasetNotFoundError,
    FashionMNIST,
    ResumableSampler,
    build_dataset,
    build_loader,
    dataset_info,
)
from a2d2c.data.datasets import CIFAR100_MEAN, CIFAR100_STD
from a2d2c.engine import DataConfig


def test_cifar100_pickle_format(tmp_path):
    written = write_cifar100(tmp_path, n_train=6, n_test=4)
    cfg = DataConfig(name="cifar100", root=str(tmp_path), augment=False)
    assert dataset_info(cfg).num_classes == 100
    ds = build_dataset("cifar100", "train", cfg)
    assert len(ds) == 6 and ds.num_classes == 100 and ds.classes[7] == "class7"
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and y == written["train_labels"][3]
    # independent decoding of the format: plane c, row r, column q at c*1024 + r*32 + q
    raw = written["train"][3].astype(np.float32) / 255
    for c, r, q in [(0, 0, 0), (1, 5, 17), (2, 31, 31), (0, 12, 3)]:
        expect = (raw[c * 1024 + r * 32 + q] - CIFAR100_MEAN[c]) / CIFAR100_STD[c]
        assert x[c, r, q].item() == pytest.approx(expect, abs=1e-5)
    val = build_dataset("cifar100", "val", cfg)
    assert len(val) == 4 and val[0][1] == written["test_labels"][0]


def test_cifar100_training_augmentation_is_seeded(tmp_path):
    write_cifar100(tmp_path, n_train=4, n_test=2)
    ds = build_dataset("cifar100", "train", DataConfig(name="cifar100", root=str(tmp_path)))
    before = torch.get_rng_state()
    a, b, c = ds[(2, 11)], ds[(2, 11)], ds[(2, 12)]
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is untouched
    assert torch.equal(a[0], b[0])
    assert not torch.equal(a[0], c[0])  # another seed: another crop/flip (p ~ 1/162)


def test_cifar100_missing_is_a_clear_error(tmp_path):
    cfg = DataConfig(name="cifar100", root=str(tmp_path / "nowhere"))
    with pytest.raises(DatasetNotFoundError, match=r"nowhere/cifar-100-python.*download"):
        dataset_info(cfg)


def test_image_folder_layout_and_transforms(tmp_path):
    write_image_folder(tmp_path, classes=("b_cls", "a_cls", "c_cls"), per_class=2,
                       size=(40, 30))
    cfg = DataConfig(name="imagenet", root=str(tmp_path), img_size=16, resize=20)
    info = dataset_info(cfg)
    assert (info.num_classes, info.in_chans, info.img_size) == (3, 3, 16)
    train = build_dataset("imagenet", "train", cfg)
    val = build_dataset("imagenet", "val", cfg)
    assert len(train) == 6 and train.classes == ["a_cls", "b_cls", "c_cls"]
    x, y = train[(0, 5)]
    assert x.shape == (3, 16, 16) and y == 0  # sorted classes: a_cls first
    v1, v2 = val[(4, 1)][0], val[(4, 2)][0]
    assert torch.equal(v1, v2)  # validation is deterministic (center crop)
    # independently with PIL: shorter side 30 -> 20 (40 -> 26), bilinear, then the
    # central 16 x 16 (offsets (26-16)/2 = 5 and (20-16)/2 = 2)
    from PIL import Image

    img = Image.open(val.base.folder.samples[4][0]).convert("RGB")
    ref = np.asarray(img.resize((26, 20), Image.BILINEAR).crop((5, 2, 21, 18)), np.float32)
    ref = torch.from_numpy(ref).permute(2, 0, 1) / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    torch.testing.assert_close(v1, (ref - mean) / std, atol=1e-5, rtol=0)


def test_image_folder_missing_split(tmp_path):
    (tmp_path / "train" / "x").mkdir(parents=True)
    with pytest.raises(DatasetNotFoundError, match=r"val"):
        dataset_info(DataConfig(name="imagenet", root=str(tmp_path)))


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def test_fashion_mnist_from_a_given_directory(tmp_path):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 28, 28))
    labels = np.array([3, 1, 4, 1, 5])
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", imgs)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", labels)
    ds = FashionMNIST(tmp_path, train=False)
    assert ds.images.shape == (5, 1, 28, 28)
    assert torch.equal(ds.images[2, 0], torch.from_numpy(imgs[2].astype(np.uint8)))
    assert ds.targets.tolist() == labels.tolist()


def test_fashion_mnist_truncated_and_missing(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="Fashion-MNIST not found"):
        FashionMNIST(tmp_path, train=True)
    arr = np.zeros((4, 28, 28), dtype=np.uint8)
    header = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(tmp_path / "train-images-idx3-ubyte.gz", "wb") as f:
        f.write(header + arr.tobytes()[:100])
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4))
    with pytest.raises(ValueError, match="truncated"):
        FashionMNIST(tmp_path, train=True)


@pytest.mark.skipif(not Path(FASHION_MNIST_DIRS[0]).is_dir(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_package():
    ds = FashionMNIST(None, train=False)
    # published facts: 10,000 test images of 28 x 28, 1,000 per class
    assert ds.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.targets).tolist() == [1000] * 10


def test_sampler_order_is_a_function_of_seed_and_epoch():
    data = list(range(23))
    s1 = ResumableSampler(data, seed=5)
    s2 = ResumableSampler(data, seed=5)
    s1.set_epoch(3)
    s2.set_epoch(3)
    full = list(s1)
    assert full == list(s2) and sorted(i for i, _ in full) == data
    s2.set_epoch(4)
    assert [i for i, _ in s2] != [i for i, _ in full]
    s1.set_epoch(3)
    s1.skip(7)
    assert list(s1) == full[7:] and len(s1) == 16
    s1.set_epoch(3)  # set_epoch resets the skip
    assert len(list(s1)) == 23


def test_sampler_shards_across_ranks():
    data = list(range(10))
    train = [list(ResumableSampler(data, num_replicas=3, rank=r, seed=1)) for r in range(3)]
    assert all(len(t) == 4 for t in train)  # padded to an equal share per rank
    ev = [[i for i, _ in ResumableSampler(data, num_replicas=3, rank=r, shuffle=False,
                                          pad=False)] for r in range(3)]
    assert sorted(i for e in ev for i in e) == data  # evaluation: every sample exactly once
    # a sample's seed depends on (seed, epoch, index), not on the rank that loads it
    one = dict(ResumableSampler(data, seed=1))
    for t in train:
        for i, s in t:
            assert one[i] == s


def test_loader_batches_and_global_batch_size():
    cfg = DataConfig(name="synthetic", img_size=8, train_samples=20, val_samples=7,
                     batch_size=4, num_classes=3)
    train = build_dataset("synthetic", "train", cfg)
    loader = build_loader(train, cfg, train=True, seed=0, rank=1, world_size=2)
    assert loader.batch_size == 2 and len(loader) == 5
    x, y = next(iter(loader))
    assert x.shape == (2, 3, 8, 8) and y.max() < 3
    with pytest.raises(ValueError, match="not divisible by the world size 3"):
        build_loader(train, cfg, train=True, world_size=3)
    val = build_dataset("synthetic", "val", cfg)
    assert sum(len(b[1]) for b in build_loader(val, cfg, train=False)) == 7
