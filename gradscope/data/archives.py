"""Extracting dataset archives: only the dataset's folder, bounded in size, never over the user's files.

A tar member can name ``../../.bashrc``, an absolute path, or a link pointing anywhere; extracting such
an archive blindly overwrites files of the user (CVE-2007-4559). A 3 MB archive can also expand to
gigabytes, or to millions of files, and an archive can hold more than its dataset (a ``notes.txt``,
another dataset's folder) that must not land on top of the user's files of the same name. So:

* members are checked as they are read and the first offending one is refused in one line: absolute
  paths, paths climbing with ``..``, links of any kind (no dataset archive holds one, and a link moved
  into the data directory would let later writes land outside it), devices and FIFOs;
* the decompressed stream is capped (``max_bytes``: the dataset's known size plus a margin) and so is
  the number of members: extraction stops at the cap, having written at most the cap;
* only the members inside ``folder`` (the dataset's folder, e.g. ``cifar-10-batches-py``) are written;
  the others are read past and never extracted;
* everything is first written to a fresh hidden folder inside the destination (same file system, so a
  rename moves it). A dataset folder that does not exist yet is moved in with one rename, so it appears
  complete or not at all; an existing one only receives the files it lacks, one rename each. Nothing
  already in the destination is replaced or deleted: a corrupt file is reported by the loader, by
  name, and the user decides to delete it.
"""
from __future__ import annotations

import bz2
import gzip
import lzma
import os
import re
import shutil
import socket
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_COPY_CHUNK = 1 << 20


def _refuse(archive: Path, why: str) -> ValueError:
    return ValueError(f"refusing to extract {archive.name}: {why}")


def _over_cap(archive: Path, cap: int) -> ValueError:
    return _refuse(archive, f"it expands to more than {cap:,} bytes, more than the dataset can be; "
                            "it is not the published archive: delete it and download it again")


class _CappedReader:
    """A read-only stream over ``raw`` that fails once more than ``cap`` bytes have been asked of it.

    Every byte tarfile reads goes through here (headers, long names, data, members it skips), so the
    cap bounds the work of a decompression bomb whatever its shape, not only the bytes written.
    """

    def __init__(self, raw: BinaryIO, cap: int | None, archive: Path) -> None:
        self.raw, self.cap, self.archive, self.delivered = raw, cap, archive, 0

    def read(self, size: int = -1) -> bytes:
        if self.cap is not None:
            room = self.cap + 1 - self.delivered  # one byte past the cap proves it is exceeded
            size = room if size is None or size < 0 else min(size, room)
        chunk = self.raw.read(size)
        self.delivered += len(chunk)
        if self.cap is not None and self.delivered > self.cap:
            raise _over_cap(self.archive, self.cap)
        return chunk


def _open_decompressed(archive: Path) -> BinaryIO:
    # Decompression is done here rather than by tarfile so that the cap counts decompressed bytes.
    with open(archive, "rb") as handle:
        magic = handle.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(archive, "rb")
    return open(archive, "rb")


def _member_parts(member: tarfile.TarInfo, archive: Path) -> tuple[str, ...]:
    """The member's path components, after refusing anything that could write outside the target."""
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise _refuse(archive, f"member {member.name!r} points outside the target")
    if member.issym() or member.islnk():
        raise _refuse(archive, f"link {member.name!r} -> {member.linkname!r}: dataset archives hold no links, "
                               "and a link could point outside the target")
    if not (member.isfile() or member.isdir()):
        raise _refuse(archive, f"member {member.name!r} is not a file or directory")
    return name.parts


def _stage(tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...], staging: Path,
           archive: Path) -> None:
    target = staging.joinpath(*parts)
    # POSIX-clean names can still escape on Windows ("C:x", "a\\..\\..\\x"): check the joined path itself.
    if not os.path.abspath(target).startswith(os.path.join(os.path.abspath(staging), "")):
        raise _refuse(archive, f"member {member.name!r} points outside the target")
    if member.isdir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    source = tar.extractfile(member)
    # The member's data ends at its declared size, which was counted against the cap already.
    with source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, _COPY_CHUNK)
    os.utime(target, (member.mtime, member.mtime))  # as tar does; the STL-10 cache stamp relies on it


def _extract_into(archive: Path, staging: Path, *, folder: str | None, max_bytes: int | None,
                  max_members: int | None) -> None:
    declared = 0
    with _open_decompressed(archive) as raw, \
            tarfile.open(fileobj=_CappedReader(raw, max_bytes, archive), mode="r|") as tar:
        for count, member in enumerate(tar, start=1):
            if max_members is not None and count > max_members:
                raise _refuse(archive, f"it holds more than {max_members} members, more than the dataset has")
            parts = _member_parts(member, archive)
            declared += member.size
            if max_bytes is not None and declared > max_bytes:  # refused before a byte of it is written
                raise _over_cap(archive, max_bytes)
            if not parts:  # "." or "./": the archive's root
                continue
            if folder is not None:
                if parts[0] != folder:
                    continue  # not the dataset's: read past, never written
                if len(parts) == 1 and not member.isdir():
                    raise _refuse(archive, f"member {member.name!r} should be the dataset's folder")
            _stage(tar, member, parts, staging, archive)


def _move_in(entry: Path, target: Path) -> list[Path]:
    """Rename ``entry`` to ``target`` if nothing is there; an existing folder gets only what it lacks."""
    if entry.is_dir() and target.is_dir():  # a link to a folder the user made is followed: their choice
        moved = []
        for child in sorted(entry.iterdir()):
            moved += _move_in(child, target / child.name)
        return moved
    if os.path.lexists(target):
        if entry.is_dir():
            raise ValueError(f"{target} is not a directory, but the extracted folder of that name belongs "
                             "there; move it away and run again")
        return []  # keep what the user has
    try:
        os.rename(entry, target)
    except OSError:
        # Another process (a second DDP rank) moved its copy in first: fill that one instead.
        if os.path.lexists(target):
            return _move_in(entry, target)
        raise
    return [target]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


#: ``.extract-<host>-<pid>-<mkdtemp's suffix, which has no "-">``: the staging folder of one extraction.
_STAGING = re.compile(r"\.extract-(?P<host>.+)-(?P<pid>\d+)-[^-]*")


def _staging_prefix() -> str:
    return f".extract-{socket.gethostname()}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process (PermissionError), or a platform without signal 0
        return True
    return True


def remove_abandoned_staging(destination: Path) -> None:
    """Delete the staging folders in ``destination`` of extractions whose process is gone.

    Extraction writes into ``.extract-<host>-<pid>-*`` and removes it when done; a process killed
    meanwhile (SIGKILL, power loss) leaves it behind. Only this host's folders are judged: a pid from
    another machine sharing the directory says nothing here, and a live process's folder is in use.
    """
    host = socket.gethostname()
    for entry in destination.glob(".extract-*"):
        match = _STAGING.fullmatch(entry.name)
        if match and entry.is_dir() and match["host"] == host and not _alive(int(match["pid"])):
            shutil.rmtree(entry, ignore_errors=True)


def extract_tar(archive: str | os.PathLike[str], destination: str | os.PathLike[str], *,
                folder: str | None = None, max_bytes: int | None = None,
                max_members: int | None = None) -> list[Path]:
    """Safely extract a (possibly compressed) tar archive into ``destination``.

    Parameters
    ----------
    archive : path
        The ``.tar``, ``.tar.gz``, ``.tar.bz2`` or ``.tar.xz`` file.
    destination : path
        Directory receiving the archive's entries (created if needed). Entries already there are never
        replaced or deleted: a folder that exists receives only the files it lacks.
    folder : str, optional
        Extract only this top-level folder (the dataset's); other members are read past. ``None``
        extracts every member.
    max_bytes : int, optional
        Cap on the decompressed archive (members' sizes and the tar stream itself). Extraction stops
        there, having written at most this many bytes, and nothing is moved into ``destination``.
    max_members : int, optional
        Cap on the number of members.

    Returns
    -------
    list of Path
        The paths moved into ``destination``: the folder, or the files an existing folder lacked.

    Raises
    ------
    ValueError
        One line naming the archive: unreadable or damaged, a member that would escape
        ``destination`` or is a link, a cap exceeded, or a non-directory in the way of a folder.
    """
    archive, destination = Path(archive), Path(destination)
    if destination.exists() and not destination.is_dir():
        raise ValueError(f"cannot extract {archive.name} into {destination}: it is not a directory")
    try:
        destination.mkdir(parents=True, exist_ok=True)
        remove_abandoned_staging(destination)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(), dir=destination))
    except OSError as exc:  # a file further up the path, no permission
        raise ValueError(f"cannot extract {archive.name} into {destination}: {_first_line(exc)}") from None
    try:
        try:
            _extract_into(archive, staging, folder=folder, max_bytes=max_bytes, max_members=max_members)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, gzip.BadGzipFile) as exc:
            raise ValueError(f"cannot extract {archive}: {_first_line(exc)}; it is damaged or not a tar "
                             "archive: delete it and download it again") from None
        moved = []
        for entry in sorted(staging.iterdir()):
            moved += _move_in(entry, destination / entry.name)
        return moved
    except OSError as exc:  # e.g. a full disk or a read-only destination
        raise ValueError(f"cannot extract {archive} into {destination}: {_first_line(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
