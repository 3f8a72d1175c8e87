"""Fashion-MNIST on the real files of Debian's `dataset-fashion-mnist` (CI installs it)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil

import pytest
import torch

from ofexp.data import DataConfig, load_dataset
from ofexp.data import fashion_mnist as fm
from ofexp.errors import DataError
from ofexp.models import ModelSpec, build_model, init_weights
from ofexp.training import evaluate, fit, make_recipe

pytestmark = pytest.mark.skipif(
    not all(os.path.isfile(os.path.join(fm.PACKAGE_DIR, n)) for n in fm.GZ_NAMES),
    reason=f"Fashion-MNIST is not installed: apt-get install {fm.PACKAGE}",
)

# sha256 of the raw uint8 pixels of the first training and first test image of the
# original files (both ankle boots)
FIRST_TRAIN_SHA256 = "5bd44e331a6d6998daf675700cd0c13dcd7af8ab954b7585124124da61459e7b"
FIRST_TEST_SHA256 = "ffc7351ed0f8bae542820866086177fa4e0b366b97bf9d998dffdb8dbe138787"


@pytest.fixture(scope="module")
def splits():
    return load_dataset(DataConfig(name="fashion_mnist"))


def test_counts_shapes_and_source(splits):
    info = splits.info
    assert (info.num_classes, info.in_channels, info.input_size) == (10, 1, 32)
    assert info.num_train + info.num_val == 60_000 and info.num_test == 10_000
    assert info.num_val == 6_000  # --val-fraction 0.1 of the training images, never the test set
    assert splits.train_x.shape == (54_000, 1, 32, 32) and splits.train_x.dtype == torch.float32
    assert info.source == fm.PACKAGE_DIR


def test_labels_are_balanced(splits):
    # Fashion-MNIST has exactly 6,000 training and 1,000 test images per class; the stratified
    # hold-out keeps that balance in both training parts
    assert torch.bincount(splits.test_y).tolist() == [1_000] * 10
    assert torch.bincount(splits.val_y).tolist() == [600] * 10
    assert torch.bincount(splits.train_y).tolist() == [5_400] * 10


def test_normalised_with_the_training_split_statistics(splits):
    assert abs(splits.train_x.mean().item()) < 1e-4
    assert splits.train_x.std().item() == pytest.approx(1.0, abs=1e-4)
    # Fashion-MNIST's pixel mean is about 0.286 and its std about 0.353 at 28×28
    assert splits.info.mean[0] == pytest.approx(0.286, abs=0.005)
    assert 0.30 < splits.info.std[0] < 0.36


def test_known_images_match_the_original_files():
    train, test = fm._read_gz_folder(fm.PACKAGE_DIR)
    assert hashlib.sha256(train.data[0].numpy().tobytes()).hexdigest() == FIRST_TRAIN_SHA256
    assert hashlib.sha256(test.data[0].numpy().tobytes()).hexdigest() == FIRST_TEST_SHA256
    assert (train.targets[0].item(), test.targets[0].item()) == (9, 9)  # both ankle boots


def test_native_size_keeps_pixels_exactly():
    s = load_dataset(DataConfig(name="fashion_mnist", image_size=28, val_fraction=0.5))
    train, _ = fm._read_gz_folder(fm.PACKAGE_DIR)
    raw = train.data.float().div(255.0)  # [60000, 28, 28]
    mean, std = s.info.mean[0], s.info.std[0]
    restored = torch.cat([s.train_x, s.val_x]).mul(std).add(mean).squeeze(1)
    # every decoded image is one of the originals, unresized (the split only reorders)
    assert torch.allclose(restored.sum(dim=(1, 2)).sort().values, raw.sum(dim=(1, 2)).sort().values, atol=1e-3)


def test_short_training_run_beats_chance_by_far(splits):
    torch.manual_seed(0)
    subset = type(splits)(splits.train_x[:4000], splits.train_y[:4000], splits.val_x[:500], splits.val_y[:500],
                          splits.test_x, splits.test_y, splits.info)
    spec = ModelSpec("mlp", 10, 1, 32, width=0.25)
    model = build_model(spec)
    recipe = make_recipe("default", epochs=2)
    init_weights(model, recipe.init)
    fit(model, subset, recipe, device="cpu", seed=1, progress=False)
    accuracy = evaluate(model, splits.test_x, splits.test_y, device="cpu")["accuracy"]
    assert accuracy > 0.70, accuracy  # chance is 0.10; an MLP on 4,000 images reaches about 0.8


def test_data_dir_with_the_original_gz_files_is_read_without_writing(tmp_path, monkeypatch):
    for name in fm.GZ_NAMES:
        shutil.copy(os.path.join(fm.PACKAGE_DIR, name), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    s = load_dataset(DataConfig(name="fashion_mnist", data_dir=str(tmp_path), image_size=8))
    assert s.info.source == str(tmp_path) and s.info.num_test == 10_000
    assert sorted(os.listdir(tmp_path)) == before  # nothing unpacked next to the user's files


def test_data_dir_in_torchvision_layout_is_read(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in fm.GZ_NAMES:
        with gzip.open(os.path.join(fm.PACKAGE_DIR, name)) as src, open(raw / name[: -len(".gz")], "wb") as dst:
            shutil.copyfileobj(src, dst)
    s = load_dataset(DataConfig(name="fashion_mnist", data_dir=str(tmp_path), image_size=8))
    assert s.info.source == str(raw) and s.info.num_train + s.info.num_val == 60_000


def test_missing_files_give_one_line_naming_the_package(tmp_path, monkeypatch):
    monkeypatch.setattr(fm, "PACKAGE_DIR", str(tmp_path / "not-installed"))
    with pytest.raises(DataError) as err:
        load_dataset(DataConfig(name="fashion_mnist", data_dir=str(tmp_path), download=False))
    message = str(err.value)
    assert "\n" not in message
    assert "apt-get install dataset-fashion-mnist" in message and str(tmp_path) in message
    assert not (tmp_path / "FashionMNIST").exists()  # no folder made when nothing is downloaded


def test_truncated_file_is_refused_in_one_line(tmp_path):
    for name in fm.GZ_NAMES:
        shutil.copy(os.path.join(fm.PACKAGE_DIR, name), tmp_path / name)
    with gzip.open(tmp_path / fm.GZ_NAMES[0], "wb") as f:
        f.write(b"\x00\x00\x08\x03\x00\x00")  # a header cut short
    with pytest.raises(DataError, match="Fashion-MNIST file .* is not an idx image file.*reinstall"):
        load_dataset(DataConfig(name="fashion_mnist", data_dir=str(tmp_path)))


# --- files that are not what they should be (issue #27, item 9) ----------------------------------

def _copy_gz(folder, names=fm.GZ_NAMES):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(os.path.join(fm.PACKAGE_DIR, name), folder / name)
    return folder


def _refused(cfg: DataConfig) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(cfg)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_a_data_dir_that_is_a_regular_file_is_refused_not_replaced_by_the_package(tmp_path):
    file = tmp_path / "fashion.gz"
    file.write_bytes(b"not a folder")
    message = _refused(DataConfig(name="fashion_mnist", data_dir=str(file)))
    assert f"--data-dir {file} is a file, not a folder" in message


def test_a_data_dir_with_three_of_the_four_files_is_refused_naming_the_missing_one(tmp_path):
    folder = _copy_gz(tmp_path / "fm", fm.GZ_NAMES[:3])
    message = _refused(DataConfig(name="fashion_mnist", data_dir=str(folder)))
    assert f"--data-dir {folder} holds 3 of Fashion-MNIST's 4 files" in message and fm.GZ_NAMES[3] in message


def test_an_empty_data_dir_without_download_is_refused_not_replaced_by_the_package(tmp_path):
    message = _refused(DataConfig(name="fashion_mnist", data_dir=str(tmp_path), download=False))
    assert str(tmp_path) in message and "downloading is off" in message


def _truncate(path, keep: int) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[:keep])


BAD_FILES = [
    ("a truncated .gz", 0, lambda p: _truncate(p, 1_000_000), "ends before its gzip stream does"),
    ("a .gz that is no gzip", 0, lambda p: p.write_bytes(b"plain text, not gzip"), "is not a gzip file"),
    ("a wrong idx magic", 1, lambda p: p.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + gzip.decompress(p.read_bytes())[4:])),
     "is not an idx label file"),
    ("labels cut short inside the stream", 1, lambda p: p.write_bytes(gzip.compress(gzip.decompress(p.read_bytes())[:5000])),
     "holds 4,992 bytes of labels, but its header says 60,000"),
    ("a wrong image size", 0, lambda p: p.write_bytes(gzip.compress(_resized_header(gzip.decompress(p.read_bytes())))),
     "holds 27×28 images, not 28×28"),
]


def _resized_header(blob: bytes) -> bytes:
    return blob[:8] + (27).to_bytes(4, "big") + blob[12:]


@pytest.mark.parametrize("case,index,damage,named", BAD_FILES, ids=[c[0] for c in BAD_FILES])
def test_a_damaged_file_is_refused_in_one_line_naming_it(tmp_path, case, index, damage, named):
    folder = _copy_gz(tmp_path / "fm")
    damage(folder / fm.GZ_NAMES[index])
    message = _refused(DataConfig(name="fashion_mnist", data_dir=str(folder)))
    assert str(folder / fm.GZ_NAMES[index]) in message and named in message, message


def test_swapped_train_and_test_label_files_are_refused_naming_them(tmp_path):
    folder = _copy_gz(tmp_path / "fm")
    train, test = folder / "train-labels-idx1-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    train_bytes, test_bytes = train.read_bytes(), test.read_bytes()
    train.write_bytes(test_bytes)
    test.write_bytes(train_bytes)
    message = _refused(DataConfig(name="fashion_mnist", data_dir=str(folder)))
    assert str(train) in message and "holds 10,000 labels, but the training set has 60,000" in message
    assert "the test set's file?" in message
