"""MNIST from its four official gzipped IDX files, each checked against its published md5."""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from digit_predictor.config import DataSettings

# md5 of the official gzipped files (the same as torchvision's MNIST.resources).
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}

WHERE_TO_GET = (
    "Get the four official files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
    "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
    "https://ossci-datasets.s3.amazonaws.com/mnist/ (a mirror of yann.lecun.com/exdb/mnist) "
    "and put them, still gzipped, in that directory, or point --data-dir / $MNIST_DIR at them."
)

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


class MnistDataError(RuntimeError):
    """An MNIST file is missing, corrupt or not what its md5 promises."""


@dataclass(frozen=True)
class MnistSplit:
    images: np.ndarray  # uint8 (N, 28, 28), white ink on black
    labels: np.ndarray  # int64 (N,)


def default_data_dir() -> Path:
    """$MNIST_DIR (environment or .env), else ../shared/data/mnist/MNIST/raw."""
    return DataSettings().mnist_dir


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_files(data_dir: Path) -> dict[str, str]:
    """Check that all four files exist and match their md5; return name -> md5."""
    checked: dict[str, str] = {}
    for name, expected in MNIST_FILES.items():
        path = data_dir / name
        if not path.is_file():
            raise MnistDataError(f"MNIST file missing: {path}. {WHERE_TO_GET}")
        actual = md5_of(path)
        if actual != expected:
            raise MnistDataError(
                f"MNIST file corrupt: {path} has md5 {actual}, expected {expected}. "
                f"Download it again. {WHERE_TO_GET}"
            )
        checked[name] = actual
    return checked


def _read_idx(path: Path, magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    header_ints = 4 if magic == IDX_IMAGES_MAGIC else 2
    header = np.frombuffer(raw[: 4 * header_ints], dtype=">u4")
    if len(header) != header_ints or int(header[0]) != magic:
        raise MnistDataError(f"{path} is not an IDX file of the expected kind. {WHERE_TO_GET}")
    shape = tuple(int(n) for n in header[1:])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 * header_ints)
    if data.size != int(np.prod(shape)):
        raise MnistDataError(f"{path} is truncated. {WHERE_TO_GET}")
    return data.reshape(shape)


def load_split(data_dir: Path, split: str) -> MnistSplit:
    """Load 'train' or 't10k' after the md5 check of all four files."""
    if split not in ("train", "t10k"):
        raise ValueError("split must be 'train' or 't10k'")
    verify_files(data_dir)
    images = _read_idx(data_dir / f"{split}-images-idx3-ubyte.gz", IDX_IMAGES_MAGIC)
    labels = _read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz", IDX_LABELS_MAGIC)
    return MnistSplit(images=images.copy(), labels=labels.astype(np.int64))
