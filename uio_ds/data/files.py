"""The files of a data source: which files a path or glob names, their formats and compression, and
their raw items one by one.

Formats, by suffix (after a compression suffix .gz / .zst / .bz2 / .xz where one is allowed):

* ``.jsonl``, and ``.json`` holding JSON lines: read line by line here, so that a bad line is skipped
  and named by file and line instead of failing the file. (``datasets``' own readers fail the whole
  file on one bad line, and its text reader ignores ``encoding_errors`` for compressed files.)
* ``.json`` holding one JSON array: parsed whole (as ``datasets``' json reader does too); a record
  is named by its index.
* ``.parquet`` and ``.arrow``: ``datasets.load_dataset`` in streaming mode, row by row.
* ``.txt``: the whole file is one text document.
* a directory: ``datasets.load_from_disk`` (a Dataset, or the ``split`` of a DatasetDict).

A file that cannot be read at all raises ``SourceReadError``, naming it and the cause.
"""

from __future__ import annotations

import glob
import json
import os
from typing import Iterator

from uio_ds.config import SourceConfig

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}
LINE_SUFFIXES = (".jsonl", ".json")
FILE_SUFFIXES = (*LINE_SUFFIXES, ".txt", ".parquet", ".arrow")


def file_format(path: str) -> tuple[str, str | None]:
    """(format suffix, compression) of a data file, e.g. (".jsonl", "zstd")."""
    stem, ext = os.path.splitext(path)
    compression = COMPRESSIONS.get(ext)
    if compression:
        ext = os.path.splitext(stem)[1]
        if ext not in (*LINE_SUFFIXES, ".txt"):
            raise ValueError(f"data source file {path!r}: only .jsonl / .json / .txt files may be compressed; "
                             f"{ext or 'no suffix'} before {os.path.splitext(path)[1]} is not read")
    if ext not in FILE_SUFFIXES:
        raise ValueError(f"data source file {path!r}: unsupported type; use one of {list(FILE_SUFFIXES)}, "
                         f"optionally compressed ({', '.join(COMPRESSIONS)}), or a datasets directory")
    return ext, compression


def source_files(source: SourceConfig) -> list[str]:
    """The files of a source (or its one ``datasets`` directory), checked to exist, be readable and
    be of a known format; raises naming the path and the fix otherwise."""
    path = source.path
    if os.path.isdir(path):
        dataset_dict = os.path.join(path, "dataset_dict.json")
        if os.path.isfile(dataset_dict):
            try:
                with open(dataset_dict) as f:
                    splits = json.load(f)["splits"]
            except (OSError, ValueError, KeyError):
                raise ValueError(f"data source {path!r}: {dataset_dict} is damaged; save the dataset again") from None
            if source.split not in splits:
                raise ValueError(f"data source {path!r} has no split {source.split!r} (it has {splits}): set the "
                                 "source's \"split\"")
        elif not os.path.isfile(os.path.join(path, "state.json")):
            raise FileNotFoundError(
                f"data source {path!r} is a directory but not one that datasets saved (no dataset_dict.json or "
                "state.json); give files, a glob, or save it with Dataset.save_to_disk / `uio-ds prepare-corpus`")
        return [path]
    files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    if not files:
        raise FileNotFoundError(f"data source glob {path!r} matches no file")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"data source file {f!r} not found")
        if file_format(f)[0] == ".txt" and source.resolved_kind != "text":
            raise ValueError(f"data source {path!r}: kind {source.resolved_kind} needs records (jsonl, json, parquet, "
                             f"arrow or a datasets directory); {f!r} is a text file")
        if not os.access(f, os.R_OK):
            raise PermissionError(f"data source file {f!r} is not readable")
        if os.path.getsize(f) == 0:
            raise ValueError(f"data source file {f!r} is empty: give a file with documents, or leave it out")
    return files


def open_binary(path: str):
    """A binary, line-iterable file object over ``path``, decompressed on the fly by its suffix."""
    compression = file_format(path)[1]
    if compression == "gzip":
        import gzip

        return gzip.open(path, "rb")
    if compression == "bz2":
        import bz2

        return bz2.open(path, "rb")
    if compression == "xz":
        import lzma

        return lzma.open(path, "rb")
    if compression == "zstd":
        import io

        try:
            import zstandard
        except ImportError:
            raise ImportError(f"{path}: reading .zst files needs the 'zstandard' package (pip install zstandard)") from None
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True))
    return open(path, "rb")


# ----------------------------------------------------------------------------- raw items of one file


def _json_is_array(path: str) -> bool:
    with open_binary(path) as f:
        head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head.startswith(b"[")


def _decode_line(raw: bytes):
    if not raw.strip():
        return None  # a blank line
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return Undecodable("undecodable bytes (not UTF-8)")
    except json.JSONDecodeError:
        return Undecodable("not valid JSON")


def lines_before(path: str, offset: int) -> int:
    """Newlines in the first ``offset`` bytes of an uncompressed file."""
    count, left = 0, offset
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(min(left, 1 << 24))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def is_json_lines(path: str) -> bool:
    """A .jsonl file, or a .json file that is not one JSON array."""
    if os.path.isdir(path):
        return False
    ext = file_format(path)[0]
    return ext == ".jsonl" or (ext == ".json" and not _json_is_array(path))


class SourceReadError(ValueError):
    """A file of a source that cannot be read at all (damaged, cut short, not what its suffix says);
    the message names the file, the cause and the fix."""


def read_failure(path: str, err: BaseException) -> str:
    cause = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    ext, compression = file_format(path)
    kind = ext + (f" in {compression}" if compression else "")
    return (f"data file {path} cannot be read ({type(err).__name__}{': ' + cause if cause else ''}): it is damaged, "
            f"cut short or not what its name says ({kind}); replace it, or leave it out of the source")


def source_read_error(err: BaseException) -> SourceReadError | None:
    """The ``SourceReadError`` behind ``err`` (raised inside ``datasets``' workers, wrapped), if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, SourceReadError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def raw_items(path: str, start: int, split: str = "train",
              byte_range: tuple[int, int] | None = None) -> Iterator[tuple[str, object]]:
    """(place, value) of every item of one file from item ``start`` on: a decoded JSON value, a row
    dict, a whole text, or a ``Undecodable`` for an item that cannot be decoded. Items are lines (JSON
    lines; blank lines count but yield nothing), array elements, rows or the one text.
    ``byte_range`` (uncompressed JSON lines only; both ends at line starts) reads just the lines
    that start in it, named by their line numbers in the whole file. A file that cannot be read at
    all (not a bad item: a bad byte in a compressed stream, a cut archive, a damaged parquet)
    raises ``SourceReadError``."""
    try:
        yield from _raw_items(path, start, split, byte_range)
    except SourceReadError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the format's library raises, the file is unreadable
        raise SourceReadError(read_failure(path, err)) from err


def _raw_items(path: str, start: int, split: str, byte_range: tuple[int, int] | None) -> Iterator[tuple[str, object]]:
    if os.path.isdir(path):
        yield from _dataset_rows(path, start, split)
        return
    ext = file_format(path)[0]
    if byte_range is not None:
        lo, hi = byte_range
        number = lines_before(path, lo)
        with open(path, "rb") as f:
            f.seek(lo)
            while f.tell() < hi:
                raw = f.readline()
                if not raw:
                    break
                number += 1
                yield f"{path}:{number}", _decode_line(raw)
        return
    if ext in LINE_SUFFIXES and not (ext == ".json" and _json_is_array(path)):
        with open_binary(path) as f:
            for number, raw in enumerate(f, start=1):
                if number <= start:
                    continue  # skipped without decoding: a resumed stream seeks by lines
                yield f"{path}:{number}", _decode_line(raw)
    elif ext == ".json":
        with open_binary(path) as f:
            try:
                values = json.loads(f.read().decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise SourceReadError(f"{path}: a JSON array file that does not parse ({err}); fix it, or write "
                                      "one record per line (.jsonl) so that bad records can be skipped") from None
        for i, value in enumerate(values[start:], start=start):
            yield f"{path}:record {i}", value
    elif ext == ".txt":
        if start == 0:
            with open_binary(path) as f:
                data = f.read()
            try:
                yield path, {"text": data.decode("utf-8")}
            except UnicodeDecodeError:
                yield path, Undecodable("undecodable bytes (not UTF-8)")
    else:
        from datasets import load_dataset

        rows = load_dataset(ext[1:], data_files=path, split="train", streaming=True)
        for i, row in enumerate(rows.skip(start) if start else rows, start=start):
            yield f"{path}:row {i}", row


def _dataset_rows(path: str, start: int, split: str) -> Iterator[tuple[str, object]]:
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(path)
    name = path
    if isinstance(data, DatasetDict):
        data, name = data[split], f"{path}[{split}]"
    for first in range(start, len(data), 1024):  # a slice at a time: one row at a time is slow
        batch = data[first:first + 1024]
        columns = list(batch)
        for j, values in enumerate(zip(*(batch[c] for c in columns))):
            yield f"{name}:row {first + j}", dict(zip(columns, values))


class Undecodable(str):
    """An item that could not be decoded; the string is the reason."""
