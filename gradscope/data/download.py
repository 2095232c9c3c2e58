"""Fetching CIFAR-10 and STL-10 from their public URLs: progress, resume, checksum, atomic rename.

Only the standard library's ``urllib`` is used. Bytes arrive in
``<archive>.part``; an interrupted download is resumed with an HTTP ``Range``
request (a server that ignores the header simply sends the whole file again and
the ``.part`` is rewritten from the start). The finished file's MD5 is compared
with the published one; on a mismatch the ``.part`` is deleted, since resuming
from corrupt bytes can never succeed. Only a verified file is renamed to its
final name, so an archive under its final name is always complete. A download is also
stopped at the dataset's known size (with a margin): a wrong URL, or a server that sends
no ``Content-Length``, cannot fill the disk. An archive found locally is verified against
the same checksum before it is extracted (see :mod:`gradscope.data.archives` for how).

The URL and checksum of each dataset can be overridden, for a mirror or for
tests against a local server, by arguments or by the environment variables
``GRADSCOPE_<NAME>_URL`` and ``GRADSCOPE_<NAME>_MD5`` (``<NAME>`` = ``CIFAR10``,
``STL10``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from gradscope._checks import check_choice
from gradscope.data.archives import extract_tar
from gradscope.data.locations import missing, resolve_data_dir

_USER_AGENT = "gradscope-data/1 (+urllib)"


@dataclasses.dataclass(frozen=True)
class Source:
    """Where a dataset archive is published, its MD5 checksum, and what it may hold.

    Attributes
    ----------
    url, md5, filename : str
        Address, hex MD5 digest and file name of the archive.
    folder : str
        The top-level folder of the archive that holds the dataset: the only thing extracted.
    max_archive_bytes : int
        A download is stopped past this size (the archive's known size plus a margin).
    max_extracted_bytes : int
        Extraction is stopped once the decompressed archive exceeds this.
    max_members : int
        Extraction is refused past this many members.
    """

    url: str
    md5: str
    filename: str
    folder: str
    max_archive_bytes: int
    max_extracted_bytes: int
    max_members: int = 64


# Checksums as published with the datasets (the CIFAR page lists c58f30...; the same
# values are used by every major loader of these archives). Known sizes: the CIFAR-10
# archive is 170,498,071 bytes and expands to about 186 MB (six 31 MB batches); the STL-10
# one is 2,640,397,119 bytes and expands to about 3.12 GB (unlabeled_X.bin alone is
# 2,764,800,000). The caps leave about 10% so that a mirror's repacked copy still passes,
# while a wrong or hostile file is stopped near the real size instead of filling the disk.
SOURCES: dict[str, Source] = {
    "cifar10": Source("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                      "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", "cifar-10-batches-py",
                      max_archive_bytes=190_000_000, max_extracted_bytes=210_000_000),
    "stl10": Source("http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                    "91f7769df0f17e558f3565bffb0c7dfb", "stl10_binary.tar.gz", "stl10_binary",
                    max_archive_bytes=2_900_000_000, max_extracted_bytes=3_450_000_000),
}


def source_for(name: str, *, url: str | None = None, md5: str | None = None) -> Source:
    """The download source of ``name``: arguments beat environment variables beat :data:`SOURCES`."""
    check_choice("downloadable dataset", name, SOURCES)
    default = SOURCES[name]
    prefix = f"GRADSCOPE_{name.upper()}_"
    return dataclasses.replace(default, url=url or os.environ.get(prefix + "URL") or default.url,
                               md5=(md5 or os.environ.get(prefix + "MD5") or default.md5).lower())


def file_md5(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex MD5 digest of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _resumes_at(response, offset: int) -> bool:
    """Whether ``response`` continues the ``.part`` file at ``offset`` (a 206 for exactly that range)."""
    if not offset or response.status != 206:
        return False
    match = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return bool(match) and int(match.group(1)) == offset


def _too_large(part: Path, message: str) -> ValueError:
    part.unlink(missing_ok=True)  # bytes past the cap can never pass the checksum: resuming is pointless
    return ValueError(f"{message}; check the URL (the partial download was deleted)")


def _fetch_into(url: str, part: Path, *, timeout: float, progress: bool, chunk_size: int,
                max_bytes: int | None) -> None:
    from tqdm import tqdm

    offset = part.stat().st_size if part.exists() else 0
    if max_bytes is not None and offset > max_bytes:
        part.unlink()
        offset = 0
    try:
        response = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # nothing after offset: the .part is already whole
            return
        raise ValueError(f"download of {url} failed: HTTP {exc.code} {exc.reason}; "
                         "check the URL or try again later") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ValueError(f"could not download {url}: {reason}; check the network connection, "
                         f"or put {part.name.removesuffix('.part')} into {part.parent} yourself") from None
    with response:
        if not _resumes_at(response, offset):
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        if max_bytes is not None and total is not None and total > max_bytes:
            raise _too_large(part, f"refusing to download {url}: it is {total:,} bytes, more than the "
                                   f"{max_bytes:,} bytes the archive can be")
        try:
            with open(part, "ab" if offset else "wb") as out, \
                    tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=part.name.removesuffix(".part"), disable=not progress, leave=False) as bar:
                # Without a Content-Length only the cap ends a runaway body: read at most one byte past it.
                room = None if max_bytes is None else max_bytes + 1 - out.tell()
                while (room is None or room > 0) and (chunk := response.read(
                        chunk_size if room is None else min(chunk_size, room))):
                    out.write(chunk)
                    bar.update(len(chunk))
                    room = None if room is None else room - len(chunk)
                received = out.tell()
        except (OSError, http.client.HTTPException) as exc:
            raise ValueError(f"download of {url} interrupted ({exc}); run again with --download "
                             f"to resume from {part}") from None
        if max_bytes is not None and received > max_bytes:
            raise _too_large(part, f"download of {url} stopped: more than {max_bytes:,} bytes arrived, more than "
                                   "the archive can be")
        if total is not None and received < total:  # http.client ends a cut connection silently
            raise ValueError(f"download of {url} interrupted after {received} of {total} bytes; run again "
                             f"with --download to resume from {part}")


def download_file(url: str, destination: str | os.PathLike[str], md5: str, *, progress: bool = True,
                  timeout: float = 60.0, chunk_size: int = 1 << 20, max_bytes: int | None = None) -> Path:
    """Download ``url`` to ``destination``, resuming a partial download and verifying its MD5.

    Parameters
    ----------
    url : str
        ``http(s)://`` address of the file.
    destination : path
        Final path. If it already exists with the right checksum nothing is fetched;
        with a wrong one it is deleted and fetched again.
    md5 : str
        Expected hex MD5 digest.
    progress : bool
        Show a tqdm progress bar (bytes, rate, ETA) on stderr.
    timeout : float
        Seconds a connection may stay silent before the download is abandoned
        (it can then be resumed).
    chunk_size : int
        Bytes read per step.
    max_bytes : int, optional
        The most the file can be. A larger announced ``Content-Length`` is refused before the
        body is read; without one, the download is stopped one byte past the cap. Either way
        the partial file is deleted.

    Returns
    -------
    Path
        ``destination``.

    Raises
    ------
    ValueError
        One line: network failure, HTTP error, a file over ``max_bytes``, or checksum
        mismatch (after the last two the partial file is deleted).
    """
    destination = Path(destination)
    md5 = md5.lower()
    if destination.exists():
        if file_md5(destination) == md5:
            return destination
        destination.unlink()
    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file further up the path, no permission
        raise ValueError(f"cannot download {url} into {destination.parent}: {exc}") from None
    part = destination.with_name(destination.name + ".part")
    _fetch_into(url, part, timeout=timeout, progress=progress, chunk_size=chunk_size, max_bytes=max_bytes)
    actual = file_md5(part)
    if actual != md5:
        part.unlink()
        raise ValueError(f"checksum mismatch for {url}: expected md5 {md5}, got {actual}; "
                         "the download was deleted, run again with --download")
    os.replace(part, destination)
    return destination


def download_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, *,
                     url: str | None = None, md5: str | None = None, progress: bool = True) -> Path:
    """Download and safely extract the archive of ``name`` (``"cifar10"`` or ``"stl10"``).

    Parameters
    ----------
    name : str
        ``"cifar10"`` or ``"stl10"``.
    data_dir : path, optional
        Where the archive and its extracted directory go; default
        :func:`gradscope.data.default_data_dir`.
    url, md5 : str, optional
        Override the published source (see the module docstring).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        The data directory, now holding the archive and its extracted contents.

    Examples
    --------
    >>> download_dataset("cifar10", "/data")  # doctest: +SKIP
    PosixPath('/data')
    """
    source = source_for(name, url=url, md5=md5)
    root = resolve_data_dir(data_dir)
    _check_not_in_the_way(name, root, source)
    archive = download_file(source.url, root / source.filename, source.md5, progress=progress,
                            max_bytes=source.max_archive_bytes)
    extract_dataset(archive, root, source)
    return root


def extract_dataset(archive: Path, root: Path, source: Source) -> list[Path]:
    """Extract the dataset folder of ``source`` from ``archive`` into ``root``, within its known size."""
    return extract_tar(archive, root, folder=source.folder, max_bytes=source.max_extracted_bytes,
                       max_members=source.max_members)


def verify_archive(name: str, archive: Path, source: Source) -> None:
    """Raise a one-line ``ValueError`` unless ``archive`` has the MD5 of ``source``.

    An archive put into the data directory by hand (or left by another tool) may be
    truncated or another file altogether; it is extracted only once it is known to be
    the published one.
    """
    actual = file_md5(archive)
    if actual != source.md5:
        raise ValueError(f"cannot extract {archive}: its md5 is {actual}, not the expected {source.md5}, so it "
                         f"is incomplete or another file; delete it and pass --download (or, for a mirror's "
                         f"copy you trust, set GRADSCOPE_{name.upper()}_MD5)")


def _check_not_in_the_way(name: str, root: Path, source: Source) -> None:
    # Path.exists() is False below a file, which would turn these into a misleading "not found".
    if root.exists() and not root.is_dir():
        raise ValueError(f"the data directory {root} is not a directory; pass --data-dir pointing at one")
    folder = root / source.folder
    if os.path.lexists(folder) and not folder.is_dir():
        raise ValueError(f"{folder} is not a directory, but the {name} files belong in a folder of that "
                         "name; move it away and run again")


def ensure_files(name: str, root: Path, required: list[Path], *, download: bool) -> None:
    """Make sure the extracted files ``required`` of ``name`` exist under ``root``.

    Missing files come from the archive already in ``root`` (verified, then extracted
    safely), or, with ``download=True``, from a verified download. Otherwise a one-line
    ``FileNotFoundError`` says which file is expected and how to get it. A file where
    the data directory or the dataset folder belongs is a one-line ``ValueError``.
    """
    source = source_for(name)
    _check_not_in_the_way(name, root, source)
    if all(path.exists() for path in required):
        return
    archive = root / source.filename
    if download:
        download_dataset(name, root)
    elif archive.exists():
        verify_archive(name, archive, source)
        extract_dataset(archive, root, source)
    absent = [path for path in required if not path.exists()]
    if absent:
        raise missing(name, [absent[0], archive],
                      "pass --download to fetch it, or --data-dir pointing at the directory that holds it")
