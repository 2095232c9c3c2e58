"""gradscope.data under hostile or broken inputs: what it refuses, in one line, and what it never touches.

Caps on sizes are lowered here (module constants, the sources' known sizes) so that a "bomb" of a few
MiB stands in for the GiB-sized ones; what is asserted is that the work stops at the cap.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import (
    add_bytes,
    cifar_batch,
    make_cifar_archive,
    serve,
    write_image,
    write_png_of_size,
)

from gradscope import data
from gradscope.data import archives, download, files, imaging

MiB = 1 << 20


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def lower_cap(monkeypatch, name: str, **caps: int) -> None:
    """Replace the known sizes of dataset ``name`` (``max_archive_bytes``, ``max_extracted_bytes``)."""
    monkeypatch.setitem(download.SOURCES, name, dataclasses.replace(download.SOURCES[name], **caps))


@pytest.fixture
def staged(monkeypatch) -> list[int]:
    """Bytes in the extraction's staging folder at the moment it is discarded, one entry per extraction."""
    sizes: list[int] = []
    real_rmtree = shutil.rmtree

    def measuring_rmtree(path, *args, **kwargs):
        if Path(path).name.startswith(".extract-"):
            sizes.append(sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file()))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(archives.shutil, "rmtree", measuring_rmtree)
    return sizes


def tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            add_bytes(tar, name, payload)
    return path


# --- 4. extraction touches only what it owns -------------------------------------------------------

def test_extraction_never_touches_entries_the_dataset_does_not_own(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "my_other_dataset").mkdir()
    (tmp_path / "my_other_dataset" / "precious.bin").write_bytes(b"\x01" * 100)
    make_cifar_archive(tmp_path, extra={"notes.txt": b"theirs", "my_other_dataset/other.bin": b"theirs",
                                        "stray.bin": b"x"})
    assert len(data.load_dataset("cifar10", data_dir=tmp_path)) == 15
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert (tmp_path / "my_other_dataset" / "precious.bin").read_bytes() == b"\x01" * 100
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "cifar-10-batches-py", "cifar-10-python.tar.gz", "my_other_dataset", "notes.txt"]
    assert sorted(p.name for p in (tmp_path / "my_other_dataset").iterdir()) == ["precious.bin"]


def test_extraction_fills_an_incomplete_dataset_folder_and_keeps_what_is_there(tmp_path):
    make_cifar_archive(tmp_path)
    data.load_dataset("cifar10", data_dir=tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_4").unlink()
    (folder / "my_notes.txt").write_text("mine")
    batch_1 = (folder / "data_batch_1").stat()
    assert len(data.load_dataset("cifar10", data_dir=tmp_path)) == 15
    assert (folder / "my_notes.txt").read_text() == "mine"
    assert (folder / "data_batch_4").exists()
    assert (folder / "data_batch_1").stat().st_ino == batch_1.st_ino  # kept, not replaced
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_staging_left_by_a_killed_extraction_is_removed_by_the_next_one(tmp_path):
    host = socket.gethostname()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead = int(gone.stdout)  # a process that has exited
    out = tmp_path / "out"
    abandoned = out / f".extract-{host}-{dead}-abc_1"
    in_use = out / f".extract-{host}-{os.getpid()}-xyz"  # a live process (this one) is still writing
    elsewhere = out / f".extract-other-host-{dead}-q"  # another machine's pid says nothing here
    for folder in (abandoned, in_use, elsewhere):
        (folder / "cifar-10-batches-py").mkdir(parents=True)
        (folder / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"half")
    archive = tar_gz(tmp_path / "a.tar.gz", {"d/x.bin": b"1"})
    assert data.extract_tar(archive, out) == [out / "d"]
    assert not abandoned.exists()
    assert in_use.exists() and elsewhere.exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == sorted([in_use.name, elsewhere.name])


def test_a_local_archive_is_verified_before_it_is_extracted(tmp_path, monkeypatch):
    make_cifar_archive(tmp_path, seed=1, declare=False)  # a different archive under the expected name
    genuine = hashlib.md5(b"the published archive").hexdigest()
    monkeypatch.setenv("GRADSCOPE_CIFAR10_MD5", genuine)
    with pytest.raises(ValueError, match=rf"cifar-10-python\.tar\.gz.*md5.*{genuine}") as info:
        data.load_dataset("cifar10", data_dir=tmp_path)
    assert "--download" in one_line(info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]  # nothing extracted


def test_a_broken_archive_leaves_no_half_extracted_folder(tmp_path, monkeypatch, staged):
    make_cifar_archive(tmp_path, declare=False)
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[:-200])  # cut inside the last member
    monkeypatch.setenv("GRADSCOPE_CIFAR10_MD5", download.file_md5(archive))
    with pytest.raises(ValueError, match=r"cannot extract .*cifar-10-python\.tar\.gz") as info:
        data.load_dataset("cifar10", data_dir=tmp_path)
    one_line(info)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-python.tar.gz"]
    assert len(staged) == 1  # the staging folder was discarded


# --- 5. bounded inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("sizes", [[8 * MiB], [400 << 10, 400 << 10, 400 << 10, 400 << 10]],
                         ids=["one-huge-member", "many-members"])
def test_a_tar_bomb_stops_at_the_datasets_cap(tmp_path, monkeypatch, staged, sizes):
    members = {f"cifar-10-batches-py/data_batch_{i}": bytes(size) for i, size in enumerate(sizes, start=1)}
    archive = tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    assert archive.stat().st_size < 64 << 10  # zeros compress ~1000:1
    monkeypatch.setenv("GRADSCOPE_CIFAR10_MD5", download.file_md5(archive))
    lower_cap(monkeypatch, "cifar10", max_extracted_bytes=MiB)
    with pytest.raises(ValueError, match=r"cifar-10-python\.tar\.gz.*1,048,576 bytes") as info:
        data.load_dataset("cifar10", data_dir=tmp_path)
    one_line(info)
    assert len(staged) == 1 and staged[0] <= MiB
    assert not (tmp_path / "cifar-10-batches-py").exists()


def test_a_huge_tar_header_is_refused_without_reading_it_into_memory(tmp_path):
    archive = tmp_path / "names.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.GNU_FORMAT) as tar:
        add_bytes(tar, "d/" + "n" * (8 * MiB), b"x")  # tarfile reads a long name whole
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"names\.tar\.gz.*1,048,576 bytes") as info:
            data.extract_tar(archive, tmp_path / "out", max_bytes=MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(info)
    assert peak < 4 * MiB
    assert list((tmp_path / "out").iterdir()) == []


def test_too_many_members_are_refused(tmp_path):
    archive = tar_gz(tmp_path / "many.tar.gz", {f"d/{i}": b"" for i in range(50)})
    with pytest.raises(ValueError, match=r"many\.tar\.gz.* more than 20 members") as info:
        data.extract_tar(archive, tmp_path / "out", max_members=20)
    one_line(info)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_download_without_content_length_stops_at_the_cap(tmp_path):
    payload = os.urandom(4 * MiB)
    md5 = hashlib.md5(payload).hexdigest()
    target = tmp_path / "file.bin"
    with serve({"/file.bin": payload}, send_length=False) as (base, _, _handler):
        with pytest.raises(ValueError, match=r"file\.bin.*more than 1,048,576 bytes") as info:
            download.download_file(f"{base}/file.bin", target, md5, progress=False, max_bytes=MiB,
                                   chunk_size=64 << 10)
        one_line(info)
        assert not target.exists() and not (tmp_path / "file.bin.part").exists()
        # Within the cap the same server is fine: the body ends when the connection closes.
        done = download.download_file(f"{base}/file.bin", target, md5, progress=False, max_bytes=4 * MiB)
        assert done.read_bytes() == payload


def test_a_download_announced_larger_than_the_cap_is_refused_before_the_body(tmp_path, monkeypatch):
    (tmp_path / "served").mkdir()
    make_cifar_archive(tmp_path / "served")
    archive = (tmp_path / "served" / "cifar-10-python.tar.gz").read_bytes()
    with serve({"/c.tar.gz": archive}) as (base, _, _handler):
        monkeypatch.setenv("GRADSCOPE_CIFAR10_URL", f"{base}/c.tar.gz")
        lower_cap(monkeypatch, "cifar10", max_archive_bytes=len(archive) - 1)
        root = tmp_path / "data"
        with pytest.raises(ValueError, match=rf"c\.tar\.gz.*{len(archive):,} bytes.*{len(archive) - 1:,}") as info:
            data.load_dataset("cifar10", data_dir=root, download=True)
        one_line(info)
        assert list(root.iterdir()) == []
        lower_cap(monkeypatch, "cifar10", max_archive_bytes=len(archive))
        assert len(data.load_dataset("cifar10", data_dir=root, download=True)) == 15


def test_a_huge_zip_member_is_refused_without_reading_it(tmp_path, monkeypatch):
    write_image(tmp_path / "face.png", 178, 218, seed=1)
    with zipfile.ZipFile(tmp_path / "img_align_celeba.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(tmp_path / "face.png", "img_align_celeba/000001.png")
        archive.writestr("img_align_celeba/000002.png", bytes(8 * MiB))
    monkeypatch.setattr(files, "MAX_IMAGE_FILE_BYTES", MiB)
    ds = data.load_dataset("celeba", data_dir=tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match=r"000002\.png.*8,388,608 bytes.*1,048,576") as info:
            ds[1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(info)
    assert peak < 2 * MiB


def test_a_decompression_bomb_image_is_one_line_naming_file_and_cap(tmp_path, monkeypatch):
    bomb = tmp_path / "pictures" / "bomb.png"
    write_png_of_size(bomb, 15000, 15000)
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(ValueError, match=r"bomb\.png.*225,000,000 pixels.*cap") as info:
        data.load_dataset("folder", data_dir=tmp_path / "pictures", image_size=32)
    one_line(info)
    # Below PIL's own limit, gradscope's cap still applies, and it can be lowered.
    small = tmp_path / "small" / "a.png"
    write_image(small, 40, 30, seed=1)
    monkeypatch.setattr(imaging, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match=r"a\.png.*40x30.*1,000 pixels"):
        data.load_dataset("folder", data_dir=small.parent, image_size=8)


# --- 6. one line, naming the path ----------------------------------------------------------------

def test_a_file_where_the_dataset_folder_belongs_is_named(tmp_path):
    make_cifar_archive(tmp_path)
    (tmp_path / "cifar-10-batches-py").write_text("not a folder")
    with pytest.raises(ValueError, match=r"cifar-10-batches-py.* not a directory") as info:
        data.load_dataset("cifar10", data_dir=tmp_path)
    one_line(info)
    assert (tmp_path / "cifar-10-batches-py").read_text() == "not a folder"


def test_a_file_given_as_the_data_dir_is_named(tmp_path):
    (tmp_path / "data").write_text("not a folder")
    with pytest.raises(ValueError, match=r"data.* not a directory") as info:
        data.load_dataset("cifar10", data_dir=tmp_path / "data")
    one_line(info)


@pytest.mark.parametrize("name, paths", [
    ("cifar10", [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)]),
    ("stl10", ["stl10_binary/unlabeled_X.bin"]),
])
def test_a_folder_where_a_data_file_belongs_is_named(tmp_path, name, paths):
    for path in paths:
        (tmp_path / path).mkdir(parents=True)
    with pytest.raises(ValueError, match=os.path.basename(paths[0])) as info:
        data.load_dataset(name, data_dir=tmp_path)
    one_line(info)


def test_a_cifar_batch_far_larger_than_a_real_one_is_not_unpickled(tmp_path, monkeypatch):
    from gradscope.data import cifar

    make_cifar_archive(tmp_path)
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 1000)
    with pytest.raises(ValueError, match=r"data_batch_1 is [\d,]+ bytes, more than the 1,000") as info:
        data.load_dataset("cifar10", data_dir=tmp_path)
    one_line(info)


def test_a_corrupt_image_in_a_dataloader_worker_is_named_on_the_first_line(tmp_path):
    root = tmp_path / "pictures"
    write_image(root / "a.png", 20, 20, seed=1)
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    ds = data.load_dataset("folder", data_dir=root, image_size=8)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1)
    with pytest.raises(data.DataFileError) as info:  # a ValueError, importable from gradscope.data
        list(loader)
    first = str(info.value).strip().splitlines()[0]  # what the CLI prints
    assert "cannot decode image" in first and "b.png" in first and "worker" in first


def test_an_archive_with_only_the_needed_members_extracts(tmp_path, monkeypatch):
    payload, written = cifar_batch(2, 0, np.random.default_rng(0))
    members = {f"cifar-10-batches-py/data_batch_{i}": payload for i in range(1, 6)}  # no folder entry
    archive = tar_gz(tmp_path / "cifar-10-python.tar.gz", members)
    monkeypatch.setenv("GRADSCOPE_CIFAR10_MD5", download.file_md5(archive))
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert torch.equal(ds.data[:2].reshape(2, -1), torch.from_numpy(written))
