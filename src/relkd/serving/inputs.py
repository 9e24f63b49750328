"""Batch input files (Parquet, CSV and JSONL, the text ones optionally gzipped) read row by row, the rows
that cannot be read kept with their reason, and the id rule that makes scores join back to their rows.

Every record of a file becomes one row, at its position: a line that does not parse stays an empty row
with the reason naming the line, so it is rejected alone and every input row is accounted for. Text is
read with ``errors="surrogateescape"``: undecodable bytes become lone surrogates, rejected per row later.
No field length limit applies at reading (a CSV field as long as the file is read like a JSONL value):
over-long text is one rule, ``max_chars``, applied to every format when rows are checked.
"""
from __future__ import annotations

import csv
import gzip
import json
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from relkd.serving.triton_model import text_problem

# What each input format must look like, for the errors that name a file that is not like that.
EXPECTED = {
    "CSV": "a UTF-8 CSV file whose first line is the header naming the columns query and title (optionally "
           "id), then one row per line, with fields that contain commas or quotes in double quotes",
    "JSONL": 'a UTF-8 text file with one JSON object per line, with the keys "query" and "title" (optionally "id")',
    "Parquet": "a Parquet file with the string columns query and title (optionally id)",
}
_FORMATS = {".parquet": "Parquet", ".csv": "CSV", ".jsonl": "JSONL", ".ndjson": "JSONL"}
ACCEPTED = ("expected .parquet, .csv or .jsonl, got {suffix!r} (CSV and JSONL may be gzipped: .csv.gz, .jsonl.gz; "
            "Parquet compresses inside the file, with any codec)")


class UnreadableInput(ValueError):
    """An input file that is not a table of the format its suffix names."""

    def __init__(self, path, fmt: str, why: str, fix: str):
        super().__init__(f"cannot read {path} as {fmt}: {why}. Expected {EXPECTED[fmt]}; {fix}")


def _shown(values, limit: int = 8) -> str:
    shown = [repr(v)[:40] for v in list(values)[:limit]]
    return "[" + ", ".join(shown) + (f", ... ({len(values)} in all)" if len(values) > limit else "") + "]"


def check_columns(df: pd.DataFrame, source: str) -> None:
    """Raise a ValueError naming `source` and the fix when `df` lacks the query or title column."""
    missing = [c for c in ("query", "title") if c not in df.columns]
    if missing:
        raise ValueError(f"{source} has no column {missing} (columns: {_shown(list(df.columns))}); scoring needs "
                         f"'query' and 'title' (and optionally 'id'): rename the columns that hold them")


def _not_text(value: str) -> str | None:
    """What makes `value` binary data rather than a header: its first undecodable byte (a lone
    surrogate) or control character; None for text."""
    for i, c in enumerate(value):
        if 0xDC80 <= ord(c) <= 0xDCFF:
            return f"byte 0x{ord(c) - 0xDC00:02x} at position {i} is not UTF-8"
        if ord(c) < 32 and c not in "\t\r\n":
            return f"control character 0x{ord(c):02x} at position {i}"
    return None


def _format(path: Path) -> tuple[str, bool]:
    """(format, gzipped) named by the file's suffixes."""
    name = path.name.lower()
    gzipped = name.endswith(".gz")
    suffix = Path(name[:-3] if gzipped else name).suffix
    fmt = _FORMATS.get(suffix)
    if fmt == "Parquet" and gzipped:
        raise ValueError(f"cannot read {path}: a gzipped Parquet file; Parquet compresses inside the file (any "
                         f"codec is read): gunzip it, or write it with to_parquet(compression='gzip')")
    if fmt is None:
        shown = (suffix + ".gz" if suffix else ".gz") if gzipped else (suffix or "no suffix")
        raise ValueError(f"cannot read {path}: " + ACCEPTED.format(suffix=shown))
    return fmt, gzipped


def _text_lines(path: Path, fmt: str, gzipped: bool, newline: str | None) -> list[str]:
    """The file's lines as text (utf-8, a BOM dropped, bad bytes as surrogates), decompressed if gzipped."""
    kwargs = {"encoding": "utf-8-sig", "errors": "surrogateescape", "newline": newline}
    if not gzipped:
        with open(path, **kwargs) as f:
            return f.readlines()
    try:
        with gzip.open(path, "rt", **kwargs) as f:
            return f.readlines()
    except (OSError, EOFError, zlib.error) as e:  # not gzip, or cut short
        raise UnreadableInput(path, fmt, f"it is not a complete gzip file ({e})",
                              "recompress it with gzip, or give an uncompressed file its own suffix") from e


def _read_csv(path: Path, gzipped: bool) -> tuple[pd.DataFrame, dict[int, str]]:
    """One row per CSV record after the header; a record with the wrong number of fields (or one the
    csv module cannot parse) stays a row of its own, empty, with its line numbers in the reason."""
    lines = _text_lines(path, "CSV", gzipped, newline="")
    text_chars = sum(map(len, lines))
    if not "".join(lines).strip():
        raise UnreadableInput(path, "CSV", "the file is empty", "write the header line and the rows")
    # The csv module refuses fields over 131,072 characters by default; no field is longer than the file,
    # so that limit never drops a row here: a long field is read, and max_chars rejects it with its id.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, text_chars + 1))
    try:
        return _parse_csv(path, lines)
    finally:
        csv.field_size_limit(limit)


def _parse_csv(path: Path, lines: list[str]) -> tuple[pd.DataFrame, dict[int, str]]:
    reader = csv.reader(iter(lines))
    header, header_line, records, errors, end = None, 0, [], {}, 0
    while True:
        start = end + 1
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            end = reader.line_num
            if header is None:
                raise UnreadableInput(path, "CSV", f"its first line cannot be parsed ({e})",
                                      "check that the file is a CSV table (and not another format renamed)") from e
            errors[len(records)] = f"{_lines(start, end)} cannot be parsed as CSV ({e}); fix or remove the row"
            records.append(None)
            continue
        end = reader.line_num
        if not record:  # a blank line (a line of empty fields, ",,", is a row: rejected as empty)
            continue
        if header is None:
            header, header_line = record, start
            binary = _not_text(",".join(header))
            if "query" not in header and "title" not in header and binary:
                raise UnreadableInput(path, "CSV", f"its first line is not a header of column names but binary "
                                      f"data ({binary})",
                                      "check that the file is a CSV table (and not another format renamed)")
            twice = sorted({c for c in header if header.count(c) > 1})
            if twice:
                raise UnreadableInput(path, "CSV", f"the header (line {start}) names the column(s) {twice} more than "
                                      f"once", "give every column its own name")
            continue
        why = None
        if end == len(lines) and "".join(lines[start - 1:end]).count('"') % 2:  # closed quotes come in pairs
            why = "opens a quoted field that is never closed (it runs to the end of the file); close the quote"
        elif len(record) != len(header):
            why = (f"has {len(record)} field(s), the header (line {header_line}) has {len(header)} "
                   f"({','.join(header)}); quote fields that contain a comma and give every row {len(header)} fields")
        if why:
            errors[len(records)] = f"{_lines(start, end)} {why}"
            records.append(None)
            continue
        records.append(record)
    if header is None:
        raise UnreadableInput(path, "CSV", "the file has no header line", "write the header line and the rows")
    frame = pd.DataFrame([r if r is not None else [None] * len(header) for r in records], columns=header,
                         dtype=object)
    return frame, errors


def _lines(start: int, end: int) -> str:
    return f"line {start}" if start == end else f"lines {start}-{end}"


def _json_problem(text: str, err: json.JSONDecodeError) -> str:
    """Where a line stops being JSON, as a column of that line (the line ending is not part of it: parsed
    with it, a line cut short reads as broken at 'line 2 column 1')."""
    what = err.msg.removesuffix(" at")
    if err.pos >= len(text):
        return f"{what} at its end, column {len(text) + 1}: the line is cut short"
    return f"{what} at column {err.pos + 1} of its {len(text)} characters"


def _read_jsonl(path: Path, gzipped: bool) -> tuple[pd.DataFrame, dict[int, str]]:
    """One row per non-blank line; a line that is not a JSON object stays an empty row with the reason."""
    records, errors = [], {}
    for n, line in enumerate(_text_lines(path, "JSONL", gzipped, newline=None), 1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as e:
            errors[len(records)] = (f"line {n} is not a JSON object ({_json_problem(text, e)}); write one JSON "
                                    f"object per line")
            record = {}
        if not isinstance(record, dict):
            errors[len(records)] = (f"line {n} is a JSON {type(record).__name__}, not an object; write one "
                                    f'object per line, e.g. {{"query": "...", "title": "..."}}')
            record = {}
        records.append(record)
    if not records:
        raise UnreadableInput(path, "JSONL", "the file is empty", "write one JSON object per line")
    if len(errors) == len(records):
        first = next(iter(errors.values()))
        raise UnreadableInput(path, "JSONL", f"none of its {len(records)} non-blank line(s) is a JSON object "
                              f"({first.split(';')[0]})",
                              "check that the file is JSONL (and not another format renamed)")
    return pd.DataFrame(records, dtype=object), errors


def read_rows(path) -> tuple[pd.DataFrame, dict[int, str]]:
    """(frame, errors) of a Parquet, CSV or JSONL file (CSV and JSONL optionally gzipped: ``.csv.gz``,
    ``.jsonl.gz``): one row per record, object-typed, and the rows that could not be parsed (row -> reason
    naming the line; those rows are empty in the frame), so a broken line is rejected alone. Undecodable
    bytes in CSV/JSONL become lone surrogates (rejected per row later). A file that is not a table of its
    format at all raises UnreadableInput."""
    path = Path(path)
    fmt, gzipped = _format(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file {path} not found")
    if fmt == "CSV":
        df, errors = _read_csv(path, gzipped)
    elif fmt == "JSONL":
        df, errors = _read_jsonl(path, gzipped)
    else:
        import pyarrow as pa

        try:  # pyarrow reads every Parquet codec (snappy, gzip, zstd, brotli, lz4) itself
            df, errors = pd.read_parquet(path), {}
        except (pa.ArrowException, OSError, ValueError) as e:
            why = "the file is empty" if path.stat().st_size == 0 else f"pyarrow says: {str(e).rstrip('.')}"
            raise UnreadableInput(path, "Parquet", why, "write it with pandas.DataFrame.to_parquet (or "
                                  "pyarrow), or give a .csv/.jsonl file its own suffix") from e
    return (df.astype(object) if len(df.columns) else df), errors


def read_table(path) -> pd.DataFrame:
    """The frame of `read_rows` (rows that could not be parsed are empty, at their positions)."""
    return read_rows(path)[0]


def check_input(path) -> tuple[pd.DataFrame, dict[int, str]]:
    """`read_rows` of a file to score, which must have the query and title columns; raises a
    ValueError naming the file and the fix otherwise (before any server is started or asked)."""
    df, errors = read_rows(path)
    check_columns(df, str(path))
    return df, errors


def row_ids(df: pd.DataFrame, rows: np.ndarray) -> list[str | None]:
    """Each row's id as text: the id column's value (None where it is missing), else the row number."""
    if "id" not in df.columns:
        return [str(r) for r in rows]
    return [None if v is None or (isinstance(v, float) and v != v) else str(v) for v in df["id"].tolist()]


def duplicate_ids(df: pd.DataFrame) -> dict[int, str]:
    """row -> reason for every row whose id an earlier row already has.

    The rule: the first row with an id (in file order, whatever becomes of it) keeps it, and later rows with
    the same id are rejected, so each id in the scores names one row and joins back unambiguously. Rows
    without an id are not duplicates of each other."""
    first, reasons = {}, {}
    for row, i in enumerate(row_ids(df, np.arange(len(df)))):
        if i is None:
            continue
        if i in first:
            reasons[row] = (f"id {i!r} repeats the id of row {first[i]} (the first row with an id keeps it, later "
                            f"ones are rejected so scores join back by id); give each row its own id")
        else:
            first[i] = row
    return reasons


def row_problems(df: pd.DataFrame, rows: np.ndarray, max_chars: int, known: dict[int, str] | None = None) -> list[str]:
    """Each row's reason not to be sent ('' when it can be): the reason `known` gives for its input row
    number in `rows` (a line that did not parse, a repeated id), else what is wrong with its query or title
    (missing, empty, not UTF-8, or over `max_chars` characters: one rule for every input format)."""
    known = known or {}
    reasons = []
    for row, query, title in zip(rows.tolist(), df["query"].tolist(), df["title"].tolist()):
        if known.get(int(row)):
            reasons.append(known[int(row)])
            continue
        problems = []
        for name, value in (("query", query), ("title", title)):
            text, problem = text_problem(value)
            if problem is None and len(text) > max_chars:
                problem = (f"has {len(text)} characters, over max_chars={max_chars} (the model reads only its "
                           f"first max_length tokens; shorten the text or raise max_chars)")
            if problem:
                problems.append(f"{name} {problem}")
        reasons.append("; ".join(problems))
    return reasons
