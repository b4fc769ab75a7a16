"""Readers of the three interaction file formats. Each returns :class:`RawInteractions`.

* ``adjacency``: the LightGCN text format, one line per user: ``user item item ...``,
  0-based non-negative integers separated by whitespace. A line with a user alone is allowed.
* ``edgelist``: one interaction per line, ``user item [rating] [timestamp]``, separated by
  whitespace, commas or tabs; integer ids; optional header line (``header=True``).
* ``atomic``: RecBole atomic files (``NAME.inter``): a tab-separated header of typed fields
  such as ``user_id:token item_id:token rating:float timestamp:float``; ids are tokens
  (strings) and are remapped to integers by the loader.

Files are UTF-8 text; a leading byte-order mark is skipped. An integer id is a run of ASCII
digits ``[0-9]+`` no greater than :data:`MAX_ID` (``2**31 - 1``): the ``given`` split protocol
uses integer ids as indices as they are, and the bound also keeps every ``user * n_items + item``
pair key within int64. Every malformed line, including one that is not valid UTF-8, raises
:class:`DataFormatError` naming the file and line; a quoted field in a message is shortened so
that an error never echoes much of a file's content.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

FORMATS = ("adjacency", "edgelist", "atomic")
MAX_ID = 2**31 - 1
_DIGITS = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")
_SHOWN = 40  # characters of a field quoted in an error message


class DataFormatError(ValueError):
    """A malformed input file; the message names the file and the line."""

    def __init__(self, path: Path | str, line: int | None, message: str) -> None:
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.message = str(path), line, message


@dataclass
class RawInteractions:
    """Interactions as read from one file, before id remapping and preprocessing.

    ``users``/``items`` are int64 arrays for integer formats, or object arrays of string tokens
    when ``tokens`` is True (atomic files). ``ratings``/``timestamps`` are float64 or None.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None = None
    timestamps: np.ndarray | None = None
    tokens: bool = False
    source: str = ""

    def __len__(self) -> int:
        return len(self.users)


def _shown(token: str) -> str:
    """``repr`` of a field for an error message, shortened to a few dozen characters."""
    return repr(token) if len(token) <= _SHOWN else repr(token[:_SHOWN]) + "..."


def _parse_id(token: str, what: str, path: Path, line: int) -> int:
    if len(token) < 10 and token.isascii() and token.isdigit():  # the common case, < 10**9 <= MAX_ID
        return int(token)
    if not _DIGITS.fullmatch(token):
        if _NEGATIVE.fullmatch(token) and len(token) <= _SHOWN:
            raise DataFormatError(path, line, f"negative {what} id {token}")
        raise DataFormatError(path, line, f"non-integer {what} id {_shown(token)} "
                                          f"(an id is ASCII digits 0-9 only)")
    if len(token) > 10 or int(token) > MAX_ID:
        raise DataFormatError(path, line, f"{what} id {_shown(token)} is above the maximum id "
                                          f"{MAX_ID} (2**31 - 1)")
    return int(token)


def _parse_float(token: str, what: str, path: Path, line: int) -> float:
    try:
        value = float(token)
    except ValueError:
        raise DataFormatError(path, line, f"non-numeric {what} {_shown(token)}") from None
    if value != value:  # NaN
        raise DataFormatError(path, line, f"{what} is NaN")
    return value


def _undecodable_line(path: Path, exc: UnicodeDecodeError) -> DataFormatError:
    """The error for the first line of ``path`` that is not valid UTF-8, found in binary mode."""
    with path.open("rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataFormatError(
                    path, line_no, f"not valid UTF-8 text (byte 0x{raw[bad.start]:02x} at column "
                                   f"{bad.start + 1}); save the file as UTF-8",
                )
    return DataFormatError(path, None, f"not valid UTF-8 text ({exc.reason})")


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """``(line number, line)`` of a UTF-8 text file, without a leading byte-order mark.

    A byte sequence that is not UTF-8 raises :class:`DataFormatError` naming its line.
    """
    with path.open("r", encoding="utf-8-sig") as f:
        try:
            yield from enumerate(f, start=1)
        except UnicodeDecodeError as exc:
            raise _undecodable_line(path, exc) from None


def read_adjacency(path: Path | str) -> RawInteractions:
    """Read the LightGCN adjacency-list format (``user item item ...`` per line)."""
    path = Path(path)
    users: list[int] = []
    items: list[int] = []
    for line_no, line in _lines(path):
        fields = line.split()
        if not fields:
            continue
        u = _parse_id(fields[0], "user", path, line_no)
        for tok in fields[1:]:
            items.append(_parse_id(tok, "item", path, line_no))
        users.extend([u] * (len(fields) - 1))
    return RawInteractions(
        np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64), source=str(path)
    )


_EDGE_SEP = re.compile(r"[,\t ]+")


def read_edgelist(
    path: Path | str, header: bool = False, separator: str | None = None
) -> RawInteractions:
    """Read ``user item [rating] [timestamp]`` lines.

    Fields are separated by whitespace, commas or tabs, or by ``separator`` when given
    (e.g. ``"::"`` for MovieLens-1M's ``ratings.dat``).
    """
    path = Path(path)
    split = _EDGE_SEP.split if separator is None else (lambda t: t.split(separator))
    users: list[int] = []
    items: list[int] = []
    ratings: list[float] = []
    stamps: list[float] = []
    n_cols: int | None = None
    for line_no, line in _lines(path):
        text = line.strip()
        if not text:
            continue
        if header and n_cols is None and line_no == 1:
            continue
        fields = [x.strip() for x in split(text)]
        if len(fields) < 2 or len(fields) > 4:
            raise DataFormatError(
                path, line_no,
                f"expected 2 to 4 fields (user item [rating] [timestamp]), got {len(fields)}",
            )
        if n_cols is None:
            n_cols = len(fields)
        elif len(fields) != n_cols:
            raise DataFormatError(
                path, line_no, f"expected {n_cols} fields like the first line, got {len(fields)}"
            )
        try:
            users.append(_parse_id(fields[0], "user", path, line_no))
        except DataFormatError as err:
            if line_no == 1 and not header:
                raise DataFormatError(
                    path, line_no,
                    f"{err.message} (if this is a header line, set header = true)",
                ) from None
            raise
        items.append(_parse_id(fields[1], "item", path, line_no))
        if n_cols >= 3:
            ratings.append(_parse_float(fields[2], "rating", path, line_no))
        if n_cols == 4:
            stamps.append(_parse_float(fields[3], "timestamp", path, line_no))
    return RawInteractions(
        np.asarray(users, dtype=np.int64),
        np.asarray(items, dtype=np.int64),
        np.asarray(ratings, dtype=np.float64) if n_cols and n_cols >= 3 else None,
        np.asarray(stamps, dtype=np.float64) if n_cols == 4 else None,
        source=str(path),
    )


def read_atomic(
    path: Path | str,
    user_field: str = "user_id",
    item_field: str = "item_id",
    rating_field: str = "rating",
    time_field: str = "timestamp",
) -> RawInteractions:
    """Read a RecBole atomic ``.inter`` file (tab separated, typed header ``name:type``)."""
    path = Path(path)
    lines = _lines(path)
    head = next(lines, (1, ""))[1]
    if not head.strip():
        raise DataFormatError(path, 1, "missing header line (expected e.g. 'user_id:token')")
    columns = head.rstrip("\r\n").split("\t")
    names: dict[str, int] = {}
    types: dict[str, str] = {}
    for pos, col in enumerate(columns):
        if ":" not in col:
            raise DataFormatError(path, 1, f"header field {_shown(col)} has no ':type' suffix")
        name, typ = col.split(":", 1)
        if typ not in ("token", "float", "token_seq", "float_seq"):
            raise DataFormatError(path, 1, f"unknown field type {_shown(typ)} in {_shown(col)}")
        names[name], types[name] = pos, typ
    for need in (user_field, item_field):
        if need not in names:
            found = ", ".join(_shown(n) for n in list(names)[:8]) + (", ..." if len(names) > 8 else "")
            raise DataFormatError(path, 1, f"header has no field {need!r} (found {found})")
    iu, ii = names[user_field], names[item_field]
    ir = names.get(rating_field)
    it = names.get(time_field)
    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[float] = []
    for line_no, line in lines:
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        fields = text.split("\t")
        if len(fields) != len(columns):
            raise DataFormatError(
                path, line_no, f"expected {len(columns)} tab-separated fields, got {len(fields)}"
            )
        u, i = fields[iu].strip(), fields[ii].strip()
        if not u or not i:
            raise DataFormatError(path, line_no, "empty user or item token")
        users.append(u)
        items.append(i)
        if ir is not None:
            ratings.append(_parse_float(fields[ir], "rating", path, line_no))
        if it is not None:
            stamps.append(_parse_float(fields[it], "timestamp", path, line_no))
    return RawInteractions(
        np.asarray(users, dtype=object),
        np.asarray(items, dtype=object),
        np.asarray(ratings, dtype=np.float64) if ir is not None else None,
        np.asarray(stamps, dtype=np.float64) if it is not None else None,
        tokens=True,
        source=str(path),
    )


def read_file(path: Path | str, fmt: str, **options: object) -> RawInteractions:
    """Dispatch on the format name (one of :data:`FORMATS`)."""
    if fmt == "adjacency":
        return read_adjacency(path)
    if fmt == "edgelist":
        sep = options.get("separator")
        return read_edgelist(
            path, header=bool(options.get("header", False)),
            separator=str(sep) if sep else None,
        )
    if fmt == "atomic":
        keys = ("user_field", "item_field", "rating_field", "time_field")
        return read_atomic(path, **{k: str(options[k]) for k in keys if k in options})
    raise ValueError(f"unknown file format {fmt!r}; choose from {FORMATS}")
