"""The error a data file that cannot be used raises, with the file named on the first line, even from a worker.

The command line prints only the first line of a ``ValueError`` (and exits with code 2), so that line
must say which file is at fault. A ``DataLoader`` worker breaks this: torch re-creates the worker's
exception in the main process as ``type(exc)(text)`` where ``text`` is ``"Caught ValueError in DataLoader
worker process 0."``, a newline, and the worker's whole traceback, whose *last* line holds the message.
:class:`DataFileError` recognises that text and moves the original message back to the front.
"""
from __future__ import annotations

import re

_WORKER = re.compile(r"\ACaught \w+ (?P<where>in DataLoader worker process \d+)\.\nOriginal Traceback")


def _file_first(message: str) -> str:
    match = _WORKER.match(message)
    lines = [line for line in message.splitlines() if line.strip()]
    if match is None or len(lines) < 2:
        return message
    # The traceback ends with "<qualified class name>: <message>"; our messages are one line.
    _, separator, original = lines[-1].partition(": ")
    if not separator:
        return message
    return f"{original} ({match.group('where')})\n{message}"


class DataFileError(ValueError):
    """A data file (image, archive member, batch) that cannot be used; the message names it on line one.

    Parameters
    ----------
    message : str
        One line naming the file, what is wrong and what to do. When it is the text torch builds for an
        exception re-raised from a ``DataLoader`` worker, the worker's message is moved to the front.

    Examples
    --------
    >>> str(DataFileError("cannot decode image a.png: truncated"))
    'cannot decode image a.png: truncated'
    >>> text = ("Caught DataFileError in DataLoader worker process 1.\\nOriginal Traceback (most recent call"
    ...         " last):\\n  File ...\\ngradscope.data.errors.DataFileError: cannot decode image a.png: bad\\n")
    >>> str(DataFileError(text)).splitlines()[0]
    'cannot decode image a.png: bad (in DataLoader worker process 1)'
    """

    def __init__(self, message: str = "") -> None:
        super().__init__(_file_first(message))
