"""Tiny datasets in the real on-disk formats, and a local HTTP server with Range support.

Nothing here imports gradscope: the files are written from the published format
descriptions, so the loaders are checked against an independent writer.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import struct
import tarfile
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import numpy as np

# --- CIFAR-10: Python 2 cPickle, protocol 2 --------------------------------------------------

def _py2_str(value: bytes) -> bytes:
    if len(value) < 256:
        return b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
    return b"T" + struct.pack("<i", len(value)) + value  # BINSTRING


def _py2_int(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])  # BININT1
    return b"J" + struct.pack("<i", value)  # BININT


def _py2_global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _py2_array(array: np.ndarray) -> bytes:
    """An ndarray as numpy 1.x under Python 2 pickled it (numpy.core.multiarray._reconstruct)."""
    assert array.dtype == np.uint8
    shape = b"(" + b"".join(_py2_int(n) for n in array.shape) + b"t"
    dtype_state = (b"(" + _py2_int(3) + _py2_str(b"|") + b"NNN" + _py2_int(-1) + _py2_int(-1) + _py2_int(0)
                   + b"t")
    dtype = _py2_global("numpy", "dtype") + _py2_str(b"u1") + b"\x89\x88\x87R" + dtype_state + b"b"
    return (_py2_global("numpy.core.multiarray", "_reconstruct") + _py2_global("numpy", "ndarray")
            + _py2_int(0) + b"\x85" + _py2_str(b"b") + b"\x87R"
            + b"(" + _py2_int(1) + shape + dtype + b"\x89" + _py2_str(array.tobytes()) + b"tb")


def _py2_value(value) -> bytes:
    if isinstance(value, np.ndarray):
        return _py2_array(value)
    if isinstance(value, str):
        return _py2_str(value.encode("latin1"))
    if isinstance(value, int):
        return _py2_int(value)
    if isinstance(value, list):
        return b"](" + b"".join(_py2_value(v) for v in value) + b"e"
    raise TypeError(type(value))


def py2_pickle(batch: dict) -> bytes:
    """A dict of str -> (str | int | list | uint8 ndarray) pickled byte-for-byte as Python 2 did."""
    items = b"".join(_py2_str(key.encode()) + _py2_value(value) for key, value in batch.items())
    return b"\x80\x02}(" + items + b"u."


def declare_md5(name: str, archive: Path) -> str:
    """Declare ``archive`` the genuine archive of ``name`` through ``GRADSCOPE_<NAME>_MD5``; return its MD5.

    A local archive is verified against the published checksum before it is extracted. The tiny
    archives of the tests stand in for the published ones, so their checksum is declared the way a user
    declares a mirror's copy. The variable is set for the rest of the session (callers of the archive
    makers have no ``monkeypatch``): every test that relies on an archive writes one first, and the
    last one written is the one declared; tests about checksums set the variable themselves.
    """
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    os.environ[f"GRADSCOPE_{name.upper()}_MD5"] = md5
    return md5


def cifar_batch(per_batch: int, number: int, rng: np.random.Generator) -> tuple[bytes, np.ndarray]:
    """One CIFAR-10 batch as the archive stores it, and its ``data`` array ``(per_batch, 3072)``."""
    data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
    batch = {"batch_label": f"batch {number}", "labels": labels, "data": data,
             "filenames": [f"img_{number}_{i}.png" for i in range(per_batch)]}
    return py2_pickle(batch), data


def make_cifar_archive(directory: Path, *, per_batch: int = 3, seed: int = 0, extra: dict[str, bytes] | None = None,
                       declare: bool = True) -> dict[str, np.ndarray]:
    """Write ``cifar-10-python.tar.gz`` with 5 train batches and a test batch of ``per_batch`` images.

    ``extra`` adds members (name -> bytes) after the genuine ones; ``declare`` declares the archive's
    checksum (:func:`declare_md5`). Returns the ``data`` arrays ``(per_batch, 3072)`` written, keyed by
    batch name.
    """
    rng = np.random.default_rng(seed)
    written = {}
    archive = directory / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for number, name in enumerate(names):
            payload, written[name] = cifar_batch(per_batch, number, rng)
            add_bytes(tar, f"cifar-10-batches-py/{name}", payload)
        add_bytes(tar, "cifar-10-batches-py/batches.meta",
                  py2_pickle({"label_names": ["airplane"] * 10, "num_cases_per_batch": per_batch}))
        for name, payload in (extra or {}).items():
            add_bytes(tar, name, payload)
    if declare:
        declare_md5("cifar10", archive)
    return written


def add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


# --- STL-10: raw uint8, per image 3 planes of 96x96 stored column-major ------------------

def stl_bytes(images: np.ndarray) -> bytes:
    """Encode ``(N, 3, 96, 96)`` [channel, row, column] images the way unlabeled_X.bin stores them."""
    n = images.shape[0]
    out = bytearray(n * 3 * 96 * 96)
    for i in range(n):
        for c in range(3):
            for x in range(96):  # column-major: the row index runs fastest
                start = i * 27648 + c * 9216 + x * 96
                out[start:start + 96] = images[i, c, :, x].tobytes()
    return bytes(out)


def make_stl_archive(directory: Path, *, count: int = 4, seed: int = 0, declare: bool = True) -> np.ndarray:
    """Write ``stl10_binary.tar.gz`` holding ``stl10_binary/unlabeled_X.bin``; return the images.

    ``declare`` declares the archive's checksum (:func:`declare_md5`).
    """
    images = np.random.default_rng(seed).integers(0, 256, size=(count, 3, 96, 96), dtype=np.uint8)
    archive = directory / "stl10_binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_bytes(tar, "stl10_binary/unlabeled_X.bin", stl_bytes(images))
        add_bytes(tar, "stl10_binary/class_names.txt", b"airplane\n")
    if declare:
        declare_md5("stl10", archive)
    return images


# --- image files ----------------------------------------------------------------------------

def write_image(path: Path, width: int, height: int, *, seed: int, fmt: str | None = None) -> np.ndarray:
    """Save a random RGB image; return its pixels (H, W, 3) as decoded back by PIL."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def write_png_of_size(path: Path, width: int, height: int) -> None:
    """A black 1-bit PNG of ``width x height`` pixels, compressed row by row (15000x15000 is ~27 KB).

    Written from the PNG specification without PIL, which would hold the whole image in memory.
    """
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the packed bits
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # bit depth 1, grayscale
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


def box_matrix(inp: int, out: int) -> np.ndarray:
    """Averaging matrix of area interpolation: row i averages inputs floor(i*inp/out)..ceil((i+1)*inp/out)-1."""
    matrix = np.zeros((out, inp))
    for i in range(out):
        start, stop = (i * inp) // out, -(-((i + 1) * inp) // out)
        matrix[i, start:stop] = 1.0 / (stop - start)
    return matrix


def area_resize(pixels_hwc: np.ndarray, size: int) -> np.ndarray:
    """Float64 (3, size, size) area-resized image, by explicit averaging matrices."""
    height, width = pixels_hwc.shape[:2]
    rows, cols = box_matrix(height, size), box_matrix(width, size)
    chw = pixels_hwc.astype(np.float64).transpose(2, 0, 1)
    return rows @ chw @ cols.T


# --- HTTP server with Range ---------------------------------------------------------------

class _Handler(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}
    log: ClassVar[list[dict]] = []
    honour_range = True
    send_length = True
    cut_after: int | None = None
    timeout = 10

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        body = self.files.get(self.path)
        requested = self.headers.get("Range")
        entry = {"path": self.path, "range": requested, "status": 404, "sent": 0}
        self.log.append(entry)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", requested or "")
        if match and self.honour_range:
            start = int(match.group(1))
            if start >= len(body):
                entry["status"] = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            entry["status"] = 206
        else:
            self.send_response(200)
            entry["status"] = 200
        payload = body[start:]
        if self.send_length:  # without it, the body ends when the connection closes (HTTP/1.0)
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.cut_after is not None:
            payload = payload[:self.cut_after]
            self.close_connection = True
        entry["sent"] = len(payload)  # before writing: the client may check the log as soon as it has read
        self.wfile.write(payload)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def serve(files: dict[str, bytes], *, honour_range: bool = True, cut_after: int | None = None,
          send_length: bool = True, lifetime: float = 60.0) -> Iterator[tuple[str, list[dict], type]]:
    """Serve ``files`` (path -> bytes) on 127.0.0.1, a free port; stops on exit or after ``lifetime`` s.

    ``send_length=False`` leaves out ``Content-Length``, as some servers and proxies do.

    Yields ``(base_url, request_log, handler_class)``; the handler's ``cut_after`` can be changed live.
    """
    handler = type("Handler", (_Handler,), {"files": files, "log": [], "honour_range": honour_range,
                                            "cut_after": cut_after, "send_length": send_length})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    watchdog = threading.Timer(lifetime, server.shutdown)
    watchdog.daemon = True
    thread.start()
    watchdog.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.log, handler
    finally:
        watchdog.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
