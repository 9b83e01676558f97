"""MNIST comes from the four IDX files, and only when their md5 sums are right."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from digit_predictor.ml.data import MNIST_FILES, MnistDataError, load_split, verify_files


def test_load_test_split(mnist_dir: Path) -> None:
    test = load_split(mnist_dir, "t10k")
    assert test.images.shape == (10_000, 28, 28) and test.images.dtype == np.uint8
    assert test.labels.shape == (10_000,)
    assert np.bincount(test.labels).tolist() == [
        980,
        1135,
        1032,
        1010,
        982,
        892,
        958,
        1028,
        974,
        1009,
    ]
    # White ink on black, as the preprocessing produces.
    assert test.images[:, 0, :].mean() < 1.0 and test.images.max() == 255


def copy_data(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in MNIST_FILES:
        shutil.copy(src / name, dst / name)
    return dst


def test_md5_mismatch_gives_a_clear_error(mnist_dir: Path, tmp_path: Path) -> None:
    data = copy_data(mnist_dir, tmp_path / "raw")
    target = data / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0xFF
    target.chmod(0o644)
    target.write_bytes(bytes(raw))
    with pytest.raises(MnistDataError, match=r"corrupt.*t10k-labels.*md5.*Download"):
        load_split(data, "t10k")


def test_missing_file_says_where_to_get_it(mnist_dir: Path, tmp_path: Path) -> None:
    data = copy_data(mnist_dir, tmp_path / "raw")
    (data / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(MnistDataError, match=r"missing.*train-images.*https://"):
        verify_files(data)


def test_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(MnistDataError, match="missing"):
        load_split(tmp_path, "train")
