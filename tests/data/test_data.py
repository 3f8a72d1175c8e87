"""ofexp.data: digits, CIFAR (on tiny files in CIFAR's own format) and image folders."""

from __future__ import annotations

import hashlib
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets import CIFAR10, CIFAR100

from ofexp.data import DATASETS, DataConfig, load_dataset
from ofexp.data import cifar as cifar_module
from ofexp.data.splits import stratified_holdout
from ofexp.errors import ConfigError, DataError


def _rows(x: torch.Tensor) -> set[bytes]:
    """Each image as bytes, to test set membership across splits."""
    return {row.numpy().tobytes() for row in x.reshape(x.shape[0], -1)}


# ---------------------------------------------------------------- digits


def test_digits_shapes_and_normalisation():
    s = load_dataset(DataConfig(name="digits", image_size=16, val_fraction=0.1))
    info = s.info
    assert (info.num_classes, info.in_channels, info.input_size) == (10, 1, 16)
    assert info.num_train + info.num_val + info.num_test == 1797
    assert info.num_test == pytest.approx(0.2 * 1797, abs=10)
    assert info.num_val == pytest.approx(0.1 * (1797 - info.num_test), abs=10)
    assert s.train_x.shape == (info.num_train, 1, 16, 16) and s.train_x.dtype == torch.float32
    assert s.train_y.dtype == torch.int64 and s.train_y.shape == (info.num_train,)
    assert s.val_x.shape[0] == s.val_y.shape[0] == info.num_val
    assert s.test_x.shape[0] == s.test_y.shape[0] == info.num_test
    # normalised with stats from the training part itself
    assert abs(s.train_x.mean().item()) < 1e-4 and s.train_x.std().item() == pytest.approx(1.0, abs=1e-3)
    assert set(s.train_y.tolist()) == set(s.test_y.tolist()) == set(range(10))
    assert info.source == "sklearn.datasets.load_digits"


def test_digits_native_size_is_not_resized():
    s = load_dataset(DataConfig(name="digits", image_size=8))
    assert s.train_x.shape[1:] == (1, 8, 8)


def test_splits_are_deterministic_and_disjoint():
    a = load_dataset(DataConfig(split_seed=3, image_size=8))
    b = load_dataset(DataConfig(split_seed=3, image_size=8))
    c = load_dataset(DataConfig(split_seed=4, image_size=8))
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.val_y, c.val_y) or not torch.equal(a.val_x, c.val_x)
    train, val, test = _rows(a.train_x), _rows(a.val_x), _rows(a.test_x)
    # the 1,797 digits images are all distinct, so shared pixels would mean a shared sample
    assert not (val & test) and not (val & train) and not (train & test)
    assert a.info.num_train + a.info.num_val + a.info.num_test == 1797


def test_holdout_indices_partition_and_stratify():
    y = torch.arange(10).repeat_interleave(20)  # 10 classes × 20
    keep, held = stratified_holdout(y, 0.25, seed=0)
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(200))
    assert torch.bincount(y[held], minlength=10).tolist() == [5] * 10
    keep, held = stratified_holdout(torch.tensor([0, 1, 0]), 0.01, seed=0)
    assert held.numel() == 1 and keep.numel() == 2  # at least one held out, even when rounding says 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "mnist"}, "digits, fashion_mnist, cifar10, cifar100, imagefolder"),
        ({"val_fraction": 0.0}, "--val-fraction"),
        ({"val_fraction": 1.0}, "--val-fraction"),
        ({"image_size": 0}, "--image-size"),
        ({"name": "imagefolder"}, "--data-dir"),
    ],
)
def test_bad_config_is_a_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DataConfig(**kwargs)


def test_to_params_is_flat_strings():
    params = DataConfig(name="cifar10").to_params()
    assert params["dataset"] == "cifar10" and params["data_dir"] == "./data"
    assert all(isinstance(v, str) for v in params.values())
    assert DATASETS == ("digits", "fashion_mnist", "cifar10", "cifar100", "imagefolder")


# ---------------------------------------------------------------- CIFAR on tiny generated files

N_TRAIN_PER_BATCH, N_TEST = 4, 6


def _md5(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.md5(f.read()).hexdigest()


def _write_pickle(path: str, obj: dict) -> str:
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return _md5(path)


def _fake_batch(rng: np.random.Generator, n: int, label_key: str, num_classes: int) -> dict:
    # CIFAR's layout: rows of 3072 uint8 = three 32×32 planes, R then G then B
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return {"data": pixels, label_key: rng.integers(0, num_classes, n).tolist()}


def make_tiny_cifar(root: str, base: type) -> type:
    """Write a few images in `base`'s file layout under root; return a subclass trusting their md5s."""
    folder = os.path.join(root, base.base_folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    is10 = base is CIFAR10
    label_key, num_classes = ("labels", 10) if is10 else ("fine_labels", 100)

    def write(files: list, n: int) -> list:
        """The file list with each file's name and the md5 of the batch just written there."""
        return [[name, _write_pickle(os.path.join(folder, name), _fake_batch(rng, n, label_key, num_classes))]
                for name, _ in files]  # fmt: skip

    train, test = write(base.train_list, N_TRAIN_PER_BATCH), write(base.test_list, N_TEST)
    names = [f"class{i}" for i in range(num_classes)]
    meta_md5 = _write_pickle(os.path.join(folder, base.meta["filename"]), {base.meta["key"]: names})
    attrs = {
        "train_list": train,
        "test_list": test,
        "meta": {**base.meta, "md5": meta_md5},
        "url": "http://127.0.0.1:9/cifar.tar.gz",  # a closed local port: "offline" fails at once, anywhere
    }
    return type(f"Tiny{base.__name__}", (base,), attrs)


@pytest.mark.parametrize("name, base", [("cifar10", CIFAR10), ("cifar100", CIFAR100)])
def test_cifar_loads_through_torchvision(tmp_path, monkeypatch, name, base):
    tiny = make_tiny_cifar(str(tmp_path), base)
    monkeypatch.setitem(cifar_module.CIFAR_CLASSES, name, tiny)
    s = load_dataset(DataConfig(name=name, data_dir=str(tmp_path), val_fraction=0.25, download=False))
    n_train = N_TRAIN_PER_BATCH * len(base.train_list)
    assert s.info.num_train + s.info.num_val == n_train and s.info.num_val >= 1
    assert s.test_x.shape == (N_TEST, 3, 32, 32) and s.test_y.dtype == torch.int64
    assert s.info.num_classes == (10 if name == "cifar10" else 100)
    assert s.info.mean == cifar_module.CIFAR_STATS[name][0]
    # undo the published normalisation and compare with the raw uint8 pixels of the test batch
    raw = tiny(root=str(tmp_path), train=False).data  # [n, 32, 32, 3] uint8
    mean = torch.tensor(s.info.mean).view(1, 3, 1, 1)
    std = torch.tensor(s.info.std).view(1, 3, 1, 1)
    pixels = (s.test_x * std + mean) * 255.0  # [n, 3, 32, 32]
    expected = torch.from_numpy(raw).permute(0, 3, 1, 2).float()
    assert torch.allclose(pixels, expected, atol=1e-3)


def test_cifar_download_is_skipped_when_files_are_present(tmp_path, monkeypatch):
    monkeypatch.setitem(cifar_module.CIFAR_CLASSES, "cifar10", make_tiny_cifar(str(tmp_path), CIFAR10))
    s = load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), download=True))
    assert s.info.source.endswith("cifar-10-batches-py")


def test_cifar_missing_without_download_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py.*DATA_DIR") as err:
        load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path), download=False))
    assert "\n" not in str(err.value)


def test_cifar_missing_and_offline_download_is_a_data_error(tmp_path, monkeypatch):
    tiny = make_tiny_cifar(str(tmp_path / "elsewhere"), CIFAR10)  # md5s of files absent from data_dir
    monkeypatch.setitem(cifar_module.CIFAR_CLASSES, "cifar10", tiny)
    with pytest.raises(DataError, match="download failed.*go online") as err:
        load_dataset(DataConfig(name="cifar10", data_dir=str(tmp_path / "data"), download=True))
    assert "\n" not in str(err.value) and err.value.__cause__ is None


# ---------------------------------------------------------------- image folders


def _png_tree(root, classes: dict[str, int], size=(12, 10), mode="RGB") -> None:
    rng = np.random.default_rng(1)
    for k, (cls, n) in enumerate(classes.items()):
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for i in range(n):
            shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
            pixels = rng.integers(0, 256, shape, dtype=np.uint8) // 2 + 60 * k  # classes differ in brightness
            Image.fromarray(pixels, mode=mode).save(os.path.join(root, cls, f"{i}.png"))


def test_imagefolder_flat_holds_out_a_test_split(tmp_path):
    _png_tree(str(tmp_path / "imgs"), {"a": 10, "b": 10})
    _png_tree(str(tmp_path / "imgs"), {"c": 10}, mode="L")  # grey images become RGB
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path / "imgs"), image_size=8, val_fraction=0.2)
    s = load_dataset(cfg)
    assert s.info.num_classes == 3 and s.info.in_channels == 3 and s.info.input_size == 8
    assert s.info.num_test == 6 and s.info.num_train + s.info.num_val == 24
    assert s.train_x.shape[1:] == (3, 8, 8)
    assert abs(s.train_x.mean().item()) < 1e-4
    again = load_dataset(cfg)
    assert torch.equal(s.val_x, again.val_x) and torch.equal(s.test_y, again.test_y)


def test_imagefolder_uses_train_and_test_subfolders(tmp_path):
    _png_tree(str(tmp_path / "train"), {"x": 6, "y": 6, "z": 6})
    _png_tree(str(tmp_path / "test"), {"y": 2, "z": 3})  # a subset of classes keeps train's numbering
    s = load_dataset(DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=4))
    assert s.info.num_test == 5 and s.info.num_train + s.info.num_val == 18
    assert sorted(s.test_y.tolist()) == [1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    "layout, match", [(None, "does not exist"), ({}, "no images"), ({"only": 3}, "at least 2")]
)
def test_imagefolder_errors(tmp_path, layout, match):
    root = tmp_path / "imgs"
    if layout is not None:
        root.mkdir()
        _png_tree(str(root), layout)
    with pytest.raises(DataError, match=match):
        load_dataset(DataConfig(name="imagefolder", data_dir=str(root)))


def test_channel_stats_chunked_and_in_one_go_agree(monkeypatch):
    from ofexp.data import splits as splits_module

    x = torch.rand(300, 3, 8, 8) * 5 + 2
    exact = splits_module.channel_stats(x)
    monkeypatch.setattr(splits_module, "STATS_IN_ONE_GO", 0)
    monkeypatch.setattr(splits_module, "STATS_CHUNK", 7)  # chunks that do not divide the set
    chunked = splits_module.channel_stats(x)
    assert np.allclose(exact[0], chunked[0], rtol=1e-12) and np.allclose(exact[1], chunked[1], rtol=1e-10)
