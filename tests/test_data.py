"""The data layer: every input kind → ImageStore, the size rule, named datasets, bad input."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets.cifar as tv_cifar
from PIL import Image

from picmap.data import datasets
from picmap.data.datasets import FASHION_MNIST_DIR, FASHION_MNIST_FILES
from picmap.data.sources import read_idx, to_store
from picmap.data.store import ImageStore

RNG = np.random.default_rng(0)


def _rgb(n: int = 4, size: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _save(path: Path, image: Image.Image | np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(image) if isinstance(image, np.ndarray) else image).save(path)
    return path


def _stripes(width: int, height: int) -> Image.Image:
    """Red left, green centre, blue right, in thirds of the width."""
    array = np.zeros((height, width, 3), np.uint8)
    third = width // 3
    array[:, :third, 0] = array[:, third : 2 * third, 1] = array[:, 2 * third :, 2] = 255
    return Image.fromarray(array)


# -- arrays and tensors -------------------------------------------------------------------------


def test_gray_uint8_array_kept_as_is():
    images = RNG.integers(0, 256, (5, 8, 8), dtype=np.uint8)
    store = to_store(images)
    assert store.images.shape == (5, 1, 8, 8) and store.images.dtype == torch.uint8
    assert np.array_equal(store.images[:, 0].numpy(), images)
    assert store.labels is None and store.class_names is None and store.file_names is None


def test_store_does_not_share_memory_with_the_input():
    images = _rgb()
    store = to_store(images)
    images[:] = 0
    assert store.images.sum() > 0


def test_rgb_uint8_array_is_channels_first():
    images = _rgb()
    store = to_store(images)
    assert store.images.shape == (4, 3, 8, 8)
    assert np.array_equal(store.images.permute(0, 2, 3, 1).numpy(), images)


def test_float_array_scaled_to_uint8():
    images = RNG.random((3, 6, 6, 3))
    store = to_store(images)
    expected = np.rint(images * 255).astype(np.uint8)
    assert np.array_equal(store.images.permute(0, 2, 3, 1).numpy(), expected)


def test_single_channel_last_axis_and_small_ints_accepted():
    images = RNG.integers(0, 256, (2, 5, 5, 1)).astype(np.int64)
    store = to_store(images)
    assert store.channels == 1
    assert np.array_equal(store.images[:, 0].numpy(), images[..., 0])


def test_rgba_array_composited_on_white():
    images = np.zeros((2, 4, 4, 4), np.uint8)
    images[..., 0] = 200  # red 200 everywhere
    images[0, ..., 3] = 0  # image 0 fully transparent
    images[1, ..., 3] = 255  # image 1 opaque
    store = to_store(images)
    assert store.channels == 3
    assert (store.images[0] == 255).all()
    assert store.images[1, :, 0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_tensor_batch(dtype):
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    source = images if dtype == torch.uint8 else images.float() / 255
    assert torch.equal(to_store(source).images, images)


def test_image_store_passes_through_and_resizes():
    store = ImageStore(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), np.array([0, 1]), ["a", "b"])
    assert to_store(store) is store
    resized = to_store(store, image_size=4)
    assert resized.images.shape == (2, 1, 4, 4) and resized.class_names == ["a", "b"]


def test_explicit_labels_ints_and_names():
    assert to_store(_rgb(3), labels=[2, 0, 1]).labels.tolist() == [2, 0, 1]
    store = to_store(_rgb(3), labels=["dog", "cat", "dog"])
    assert store.labels.dtype == np.int64
    assert store.labels.tolist() == [1, 0, 1] and store.class_names == ["cat", "dog"]


def test_one_image_is_legal():
    assert len(to_store(_rgb(1))) == 1


# -- Datasets -----------------------------------------------------------------------------------


class _Items(torch.utils.data.Dataset):
    def __init__(self, items: list, classes: list[str] | None = None):
        self.items = items
        if classes is not None:
            self.classes = classes

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


def test_dataset_of_pil_images_without_labels():
    arrays = _rgb(3)
    store = to_store(_Items([Image.fromarray(a) for a in arrays]))
    assert store.labels is None
    assert np.array_equal(store.images.permute(0, 2, 3, 1).numpy(), arrays)


def test_dataset_of_tensor_label_pairs_uses_classes():
    images = torch.rand(4, 3, 8, 8)
    items = [(image, torch.tensor(i % 2)) for i, image in enumerate(images)]
    store = to_store(_Items(items, classes=["even", "odd"]))
    assert store.labels.tolist() == [0, 1, 0, 1] and store.class_names == ["even", "odd"]
    assert torch.equal(store.images, (images * 255).round().to(torch.uint8))


def test_dataset_of_gray_ndarrays_with_labels():
    arrays = RNG.integers(0, 256, (3, 6, 6), dtype=np.uint8)
    store = to_store(_Items([(a, 7) for a in arrays]))
    assert store.channels == 1 and store.labels.tolist() == [7, 7, 7]
    assert store.class_names is None


def test_list_of_pil_images_mixed_modes_becomes_rgb():
    gray = Image.fromarray(np.full((8, 8), 100, np.uint8))
    color = Image.fromarray(_rgb(1)[0])
    store = to_store([gray, color])
    assert store.channels == 3
    assert (store.images[0] == 100).all()


# -- folders and file lists ---------------------------------------------------------------------


@pytest.fixture
def class_folder(tmp_path: Path) -> Path:
    """cats/ (2 images), dogs/ (1 image, nested deeper), plus files that must be ignored."""
    root = tmp_path / "pets"
    _save(root / "dogs" / "a.PNG", _rgb(1)[0])
    _save(root / "cats" / "b.jpg", _rgb(1)[0])
    _save(root / "cats" / "deep" / "c.JpEg", _rgb(1)[0])
    _save(root / "cats" / ".hidden.png", _rgb(1)[0])
    _save(root / ".cache" / "d.png", _rgb(1)[0])
    (root / "cats" / "notes.txt").write_text("not an image")
    return root


def test_folder_with_subfolders_gives_labels_and_class_names(class_folder: Path):
    store = to_store(class_folder)
    assert store.class_names == ["cats", "dogs"]
    assert store.labels.tolist() == [0, 0, 1]
    names = [Path(name).relative_to(class_folder).as_posix() for name in store.file_names]
    assert names == ["cats/b.jpg", "cats/deep/c.JpEg", "dogs/a.PNG"]
    assert store.images.shape == (3, 3, 8, 8)


def test_explicit_labels_override_folder_labels(class_folder: Path):
    store = to_store(str(class_folder), labels=[5, 6, 7])
    assert store.labels.tolist() == [5, 6, 7] and store.class_names is None


def test_loose_files_beside_class_folders_are_left_out_with_a_warning(class_folder: Path):
    _save(class_folder / "loose.png", _rgb(1)[0])
    with pytest.warns(UserWarning, match="1 image"):
        store = to_store(class_folder)
    assert len(store) == 3


def test_flat_folder_has_no_labels(tmp_path: Path):
    for i, image in enumerate(_rgb(3)):
        _save(tmp_path / f"{i}.png", image)
    store = to_store(tmp_path)
    assert store.labels is None and store.class_names is None and len(store) == 3


def test_list_of_paths_keeps_order_and_pixels(tmp_path: Path):
    arrays = _rgb(3)
    paths = [_save(tmp_path / f"{name}.png", a) for name, a in zip("cab", arrays, strict=True)]
    store = to_store([str(p) for p in paths], labels=[1, 2, 3])
    assert store.file_names == [str(p) for p in paths]
    assert store.labels.tolist() == [1, 2, 3]
    assert np.array_equal(store.images.permute(0, 2, 3, 1).numpy(), arrays)


def test_single_image_file(tmp_path: Path):
    store = to_store(_save(tmp_path / "one.bmp", _rgb(1)[0]))
    assert len(store) == 1 and store.channels == 3


def test_progress_bar_shown_for_many_files(tmp_path: Path, capsys):
    gray = np.zeros((4, 4), np.uint8)
    paths = [_save(tmp_path / f"{i}.png", gray) for i in range(500)]
    to_store(paths, verbose=True)
    assert "decoding" in capsys.readouterr().err
    to_store(paths, verbose=False)
    assert capsys.readouterr().err == ""


# -- size rule ----------------------------------------------------------------------------------


def test_mixed_sizes_use_median_shorter_side(tmp_path: Path):
    paths = [_save(tmp_path / f"{s}.png", _rgb(1, s)[0]) for s in (10, 20, 40)]
    assert to_store(paths).image_size == 20
    assert to_store(paths, image_size=12).images.shape == (3, 3, 12, 12)


def test_non_square_image_is_resized_then_centre_cropped(tmp_path: Path):
    store = to_store(_save(tmp_path / "wide.png", _stripes(90, 30)))
    assert store.image_size == 30
    assert store.images[0, :, 15, 15].tolist() == [0, 255, 0]  # only the green centre is left
    assert (store.images[0, 1] == 255).float().mean() > 0.9


def test_non_square_array_follows_the_same_rule():
    wide = np.asarray(_stripes(60, 20))[None]
    store = to_store(wide)
    assert store.images.shape == (1, 3, 20, 20)
    assert store.images[0, :, 10, 10].tolist() == [0, 255, 0]


def test_one_square_size_is_kept_unless_asked():
    assert to_store(_rgb(2, 9)).image_size == 9
    assert to_store(_rgb(2, 9), image_size=5).image_size == 5


# -- colour modes -------------------------------------------------------------------------------


def test_all_grayscale_files_give_one_channel(tmp_path: Path):
    deep = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1040).astype(np.uint16)
    paths = [
        _save(tmp_path / "l.png", np.full((8, 8), 7, np.uint8)),
        _save(tmp_path / "16bit.png", Image.fromarray(deep)),
        _save(tmp_path / "bilevel.png", Image.new("1", (8, 8), 1)),
        _save(tmp_path / "la.png", Image.new("LA", (8, 8), (50, 0))),
    ]
    store = to_store(paths)
    assert store.channels == 1
    assert store.images[1, 0, 0, 1] == round(1040 / 65535 * 255)  # 16 bits scaled, not clipped
    assert (store.images[2] == 255).all() and (store.images[3] == 255).all()  # transparent → white


def test_any_colour_file_makes_everything_rgb(tmp_path: Path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([0, 0, 255] * 256)
    paths = [
        _save(tmp_path / "gray.png", np.full((8, 8), 90, np.uint8)),
        _save(tmp_path / "cmyk.jpg", Image.new("CMYK", (8, 8), (0, 255, 255, 0))),
        _save(tmp_path / "palette.gif", palette),
        _save(tmp_path / "rgba.png", Image.new("RGBA", (8, 8), (255, 0, 0, 0))),
    ]
    store = to_store(paths)
    assert store.channels == 3
    assert store.images[0, :, 4, 4].tolist() == [90, 90, 90]
    assert store.images[1, :, 4, 4].tolist() == [255, 0, 0]
    assert store.images[2, :, 4, 4].tolist() == [0, 0, 255]
    assert store.images[3, :, 4, 4].tolist() == [255, 255, 255]


# -- unreadable files ---------------------------------------------------------------------------


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    good = _rgb(1, 16)[0]
    _save(tmp_path / "good.png", good)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello, I am not a picture")
    full = (tmp_path / "good.png").read_bytes()
    (tmp_path / "truncated.png").write_bytes(full[: len(full) // 2])
    return tmp_path


def test_unreadable_files_are_skipped_with_one_warning(messy_folder: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store = to_store(messy_folder)
    assert len(caught) == 1
    message = str(caught[0].message)
    for name in ("empty.png", "text.jpg", "truncated.png"):
        assert name in message
    assert "good.png" not in message
    assert store.file_names == [str(messy_folder / "good.png")]


def test_unreadable_file_raises_when_asked(messy_folder: Path):
    with pytest.raises(ValueError, match=r"empty\.png"):
        to_store(messy_folder, on_error="raise")


def test_skipped_files_drop_their_explicit_labels(messy_folder: Path):
    with pytest.warns(UserWarning):
        store = to_store(messy_folder, labels=[0, 1, 2, 3])  # empty, good, text, truncated
    assert store.labels.tolist() == [1]


@pytest.mark.parametrize("limit", [10_000, 20_000], ids=["bomb-error", "bomb-warning"])
def test_decompression_bombs_are_skipped(tmp_path: Path, monkeypatch, limit: int):
    _save(tmp_path / "small.png", _rgb(1, 8)[0])
    _save(tmp_path / "huge.png", np.zeros((150, 200), np.uint8))  # 30,000 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.warns(UserWarning, match=r"huge\.png.*DecompressionBomb") as record:
        store = to_store(tmp_path)
    assert len(record) == 1 and len(store) == 1


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_permissions_are_skipped(tmp_path: Path):
    _save(tmp_path / "ok.png", _rgb(1)[0])
    locked = _save(tmp_path / "locked.png", _rgb(1)[0])
    locked.chmod(0)
    with pytest.warns(UserWarning, match=r"locked\.png.*PermissionError"):
        assert len(to_store(tmp_path)) == 1


def test_nothing_readable_names_the_folder(tmp_path: Path):
    (tmp_path / "broken.png").write_bytes(b"nope")
    with pytest.warns(UserWarning), pytest.raises(ValueError, match=re.escape(str(tmp_path))):
        to_store(tmp_path)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        (np.zeros((0, 8, 8), np.uint8), "array is empty"),
        (torch.zeros(0, 3, 8, 8), "tensor is empty"),
        ([], "list is empty"),
        (_Items([]), "_Items is empty"),
        (np.zeros((8, 8), np.uint8), "array has shape .*N×H×W"),
        (np.zeros((2, 2, 8, 8, 3), np.uint8), "array has shape"),
        (np.zeros((8, 8, 3), np.uint8), "one H×W×C image.*array\\[None\\]"),
        (np.zeros((2, 3, 8, 8), np.uint8), "channels-first.*transpose"),
        (torch.zeros(3, 8, 8), "tensor has shape.*tensor\\[None\\]"),
        (np.full((2, 4, 4), 2.0), r"floats in \[2, 2\].*\[0, 1\]"),
        (np.full((2, 4, 4), np.nan), "floats"),
        (np.full((2, 4, 4), 256, np.int64), r"int64 values in \[256, 256\].*0\.\.255"),
        (np.full((2, 4, 4), -1, np.int16), "int16 values"),
    ],
)
def test_bad_input_value_errors(source, pattern: str):
    with pytest.raises(ValueError, match=pattern):
        to_store(source)


@pytest.mark.parametrize(
    ("source", "pattern"),
    [
        (np.full((2, 4, 4), "a"), "dtype <U1"),
        (np.zeros((2, 4, 4), np.complex64), "dtype complex64"),
        (np.empty((2, 4, 4), object), "dtype object"),
        (42, "cannot read images from a int"),
        (_Items(["not an image"]), "dataset item 0 is a str"),
    ],
)
def test_bad_input_type_errors(source, pattern: str):
    with pytest.raises(TypeError, match=pattern):
        to_store(source)


def test_missing_path(tmp_path: Path):
    with pytest.raises(ValueError, match=r"nowhere.*does not exist"):
        to_store(tmp_path / "nowhere")


def test_folder_without_images(tmp_path: Path):
    (tmp_path / "readme.txt").write_text("no pictures here")
    _save(tmp_path / ".hidden.png", _rgb(1)[0])
    with pytest.raises(
        ValueError, match=f"no image files .* found in folder {re.escape(str(tmp_path))}"
    ):
        to_store(tmp_path)


def test_labels_length_mismatch(class_folder: Path):
    with pytest.raises(ValueError, match="labels has 2 entries but the input holds 4 images"):
        to_store(_rgb(4), labels=[0, 1])
    with pytest.raises(ValueError, match="labels has 1 entries but the input holds 3 images"):
        to_store(class_folder, labels=[0])


def test_bad_options():
    with pytest.raises(ValueError, match="on_error='ignore'"):
        to_store(_rgb(), on_error="ignore")
    with pytest.raises(ValueError, match="image_size=0"):
        to_store(_rgb(), image_size=0)
    with pytest.raises(TypeError, match=r"image_size=2\.5"):
        to_store(_rgb(), image_size=2.5)


def test_dataset_with_some_labels_missing():
    with pytest.raises(ValueError, match="label all or none"):
        to_store(_Items([(np.zeros((4, 4), np.uint8), 1), np.zeros((4, 4), np.uint8)]))


# -- IDX files ----------------------------------------------------------------------------------


def _idx_bytes(array: np.ndarray) -> bytes:
    codes = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}
    code = codes[array.dtype.str[1:]]
    header = bytes([0, 0, code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_idx(path: Path, array: np.ndarray) -> Path:
    data = _idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


@pytest.mark.parametrize("dtype", ["u1", "i1", "i2", "i4", "f4", "f8"])
@pytest.mark.parametrize("name", ["x.idx", "x.idx.gz"])
def test_read_idx_round_trip(tmp_path: Path, dtype: str, name: str):
    array = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype) if dtype != "u1" else np.arange(24)
    array = array.astype(dtype)
    result = read_idx(_write_idx(tmp_path / name, array))
    assert result.dtype == np.dtype(dtype) and np.array_equal(result, array)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        (b"\x00\x00", "not an IDX file"),
        (b"\x01\x00\x08\x01" + bytes(8), "not an IDX file"),
        (b"\x00\x00\x07\x01" + bytes(8), "not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated: its header"),
        (_idx_bytes(np.zeros((2, 3), np.uint8))[:-1], "truncated or damaged"),
        (_idx_bytes(np.zeros((2, 3), np.uint8)) + b"\x00", "truncated or damaged"),
        (gzip.compress(_idx_bytes(np.zeros(4, np.uint8)))[:-6], "damaged gzip"),
    ],
)
def test_read_idx_malformed(tmp_path: Path, data: bytes, pattern: str):
    path = tmp_path / "bad.idx"
    path.write_bytes(data)
    with pytest.raises(ValueError, match=pattern) as error:
        read_idx(path)
    assert str(path) in str(error.value)


# -- named datasets -----------------------------------------------------------------------------


def test_digits():
    images, labels, names = datasets.load("Digits", return_class_names=True)
    assert images.shape == (1797, 8, 8) and images.dtype == np.uint8
    assert images.max() == 255 and labels.dtype == np.int64
    assert set(labels.tolist()) == set(range(10)) and names == [str(d) for d in range(10)]
    assert to_store(images, labels).channels == 1


def test_digits_has_no_split():
    with pytest.raises(ValueError, match="digits has no train/test split"):
        datasets.load("digits", split="train")


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_from_the_debian_package():
    test_images, test_labels = datasets.load("fashion_mnist", split="test")
    assert test_images.shape == (10_000, 28, 28) and test_labels.shape == (10_000,)
    images, labels, names = datasets.load("FASHION-MNIST", return_class_names=True)
    assert images.shape == (70_000, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images[60_000:], test_images) and np.array_equal(
        labels[60_000:], test_labels
    )
    assert names[0] == "T-shirt/top" and len(names) == 10


def _tiny_fashion(folder: Path, gzipped: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", 5), ("test", 3)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n).astype(np.uint8)
        for name, array in zip(FASHION_MNIST_FILES[split], (images, labels), strict=True):
            _write_idx(folder / (name if gzipped else name.removesuffix(".gz")), array)
        data[split] = images, labels
    return data


def test_fashion_mnist_from_a_root(tmp_path: Path):
    data = _tiny_fashion(tmp_path)
    images, labels = datasets.load("fashion-mnist", root=tmp_path, split="train")
    assert np.array_equal(images, data["train"][0]) and labels.dtype == np.int64
    images, labels = datasets.load("fashion-mnist", root=str(tmp_path))
    assert np.array_equal(images, np.concatenate([data["train"][0], data["test"][0]]))
    assert np.array_equal(labels, np.concatenate([data["train"][1], data["test"][1]]))


def test_fashion_mnist_in_torchvision_layout_unpacked(tmp_path: Path):
    data = _tiny_fashion(tmp_path / "FashionMNIST" / "raw", gzipped=False)
    images, _ = datasets.load("fashion-mnist", root=tmp_path, split="test")
    assert np.array_equal(images, data["test"][0])


def test_fashion_mnist_missing(tmp_path: Path):
    with pytest.raises(ValueError, match="apt-get install dataset-fashion-mnist") as error:
        datasets.load("fashion-mnist", root=tmp_path)
    assert "t10k-labels-idx1-ubyte.gz" in str(error.value) and str(tmp_path) in str(error.value)


def _pickle(path: Path, content: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(content))


def _cifar_rows(n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images as CIFAR rows (1024 red, 1024 green, 1024 blue) and as N×32×32×3."""
    images = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return images.transpose(0, 3, 1, 2).reshape(n, 3072), images


@pytest.fixture
def tiny_cifar(tmp_path: Path, monkeypatch) -> Path:
    """CIFAR-10 (2 images per batch) and CIFAR-100 (3 train, 2 test) in torchvision's layout."""
    # torchvision checks each file's md5 against the real CIFAR files; our tiny copies cannot
    # match, so the check here only asks that the file exists.
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
    ten = tmp_path / "cifar-10-batches-py"
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        rows, _ = _cifar_rows(2)
        _pickle(ten / name, {"data": rows, "labels": [i, 9 - i]})
    _pickle(ten / "batches.meta", {"label_names": [f"class{k}" for k in range(10)]})
    hundred = tmp_path / "cifar-100-python"
    for name, n in (("train", 3), ("test", 2)):
        rows, _ = _cifar_rows(n)
        _pickle(
            hundred / name, {"data": rows, "fine_labels": list(range(n)), "coarse_labels": [0] * n}
        )
    _pickle(hundred / "meta", {"fine_label_names": [f"fine{k}" for k in range(100)]})
    return tmp_path


def test_cifar10_from_a_root(tiny_cifar: Path):
    images, labels, names = datasets.load("CIFAR10", root=tiny_cifar, return_class_names=True)
    assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [0, 9, 1, 8, 2, 7, 3, 6, 4, 5, 5, 4]  # train batches, then test
    assert names == [f"class{k}" for k in range(10)]
    rows = pickle.loads((tiny_cifar / "cifar-10-batches-py" / "test_batch").read_bytes())["data"]
    assert np.array_equal(images[10:], rows.reshape(2, 3, 32, 32).transpose(0, 2, 3, 1))
    assert datasets.load("cifar10", root=tiny_cifar, split="test")[0].shape == (2, 32, 32, 3)


def test_cifar100_from_a_root(tiny_cifar: Path):
    images, labels, names = datasets.load("cifar-100", root=tiny_cifar, return_class_names=True)
    assert images.shape == (5, 32, 32, 3) and labels.tolist() == [0, 1, 2, 0, 1]
    assert len(names) == 100 and names[1] == "fine1"
    assert datasets.load("cifar100", root=tiny_cifar, split="train")[0].shape == (3, 32, 32, 3)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing(tmp_path: Path, name: str):
    with pytest.raises(ValueError, match=r"download=True.*root=") as error:
        datasets.load(name, root=tmp_path)
    assert str(tmp_path) in str(error.value)


def test_available_reports_what_is_on_disk(tiny_cifar: Path):
    entries = {entry["name"]: entry for entry in datasets.available(root=tiny_cifar)}
    assert set(entries) == {"digits", "fashion-mnist", "cifar10", "cifar100"}
    assert entries["digits"]["offline"] and entries["cifar10"]["offline"]
    assert entries["cifar100"]["location"] == str(tiny_cifar / "cifar-100-python")
    assert not entries["fashion-mnist"]["offline"]
    assert all(entry["description"] for entry in entries.values())


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown dataset 'mnist'.*digits, fashion-mnist"):
        datasets.load("mnist")


def test_unknown_split():
    with pytest.raises(ValueError, match="split='valid'"):
        datasets.load("cifar10", split="valid")
