"""Parquet input: every way a file can fail to load becomes one DataError that says why."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from kit.errors import DataError


def parquet_schema(path: Path) -> pl.Schema:
    """The file's schema. Paths are never glob patterns to kit: Polars expands them by default,
    so a folder named `run [1]` would read as an empty match."""
    return pl.scan_parquet(path, glob=False).collect_schema()


def pandas_metadata(path: str | Path) -> dict:
    """The metadata pandas' `to_parquet` writes into the file's schema, {} where there is none
    (Polars writes none) or it does not read as pandas' object."""
    try:
        meta = json.loads(pl.read_parquet_metadata(path).get("pandas") or "{}")
    except Exception:  # a foreign or broken entry: as none
        return {}
    return meta if isinstance(meta, dict) else {}


def pandas_index_columns(path: Path) -> list[str]:
    """Columns pandas wrote for a DataFrame's index (`to_parquet` of a filtered frame stores
    `__index_level_0__`): pandas' read_parquet, which the scorers use, makes them the index
    again, so they are no column of the data there."""
    listed = pandas_metadata(path).get("index_columns", [])
    return [c for c in listed if isinstance(c, str)] if isinstance(listed, list) else []


def pandas_column_types(path: str | Path) -> dict[str, tuple[str, str]]:
    """(numpy_type, pandas_type) per column, from the metadata pandas' `to_parquet` writes
    (`{"Int8": ...}` for a nullable Int8 column); {} for a file pandas did not write (Polars
    writes none) or metadata kit cannot read. pandas' read_parquet restores the dtypes it
    names, so they type the scorer's rows (r304)."""
    meta = pandas_metadata(path)
    listed, index = meta.get("columns", []), meta.get("index_columns", [])
    if not (isinstance(listed, list) and isinstance(index, list)):
        return {}
    return {str(c.get("field_name", c.get("name"))): (str(c.get("numpy_type")),
                                                      str(c.get("pandas_type")))
            for c in listed if isinstance(c, dict)
            and c.get("field_name", c.get("name")) not in index}


def refuse_index_columns(path: str | Path, names) -> None:
    """Refuse a file whose spec columns pandas stored as its index (`df.set_index("seq_ix")
    .to_parquet`): pandas' read_parquet, as the competition's scorer reads the file, makes
    them the index, so its rows start with another column. Every command refuses it, as
    kit data check does (training and kit score read them by name and passed)."""
    hidden = [c for c in pandas_index_columns(Path(path)) if c in names]
    if hidden:
        raise DataError(f"{path}: column(s) {hidden} are stored as the pandas index: pandas' "
                        "read_parquet, as the competition's scorer reads the file, makes them "
                        "the index, not columns of its rows; write the file with "
                        "df.reset_index().to_parquet(PATH)")


def scan_parquet(path: Path) -> pl.LazyFrame:
    return pl.scan_parquet(path, glob=False)


def read_frame(path: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """Read parquet with Polars; a missing, empty, corrupt or truncated file raises DataError."""
    path = Path(path)
    schema = file_schema(path)
    if columns is not None:
        columns = list(dict.fromkeys(columns))  # a column named twice (group = the id) read once
        missing = [c for c in columns if c not in schema]
        if missing:
            raise DataError(f"{path}: missing column(s) {missing}")
    try:
        return pl.read_parquet(path, columns=columns, glob=False)
    except Exception as exc:
        raise unreadable_data(path, exc) from None


def spec_columns_in(path: str | Path, spec) -> list[str]:
    """The spec's columns that the file holds, in the spec's order: what training and the
    feature build read (a column the spec does not name, perhaps one Polars cannot decode,
    is left alone, as `kit data check --allow-extra` says; a missing one is named later)."""
    schema = file_schema(path)
    refuse_index_columns(path, spec.columns)
    return [c for c in spec.columns if c in schema]


def file_schema(path: str | Path) -> pl.Schema:
    """The schema of a parquet file; a missing, empty, non-parquet or corrupt one raises
    DataError saying which."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder; pass a .parquet file{combine_hint(path)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty (0 bytes)")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"ARROW1":  # Feather v2: read_csv, as the advice below says, fails on it
        raise DataError(f"{path}: an Arrow IPC (Feather) file, not parquet; kit reads parquet: "
                        "convert it with polars.read_ipc(PATH).write_parquet(NEW_PATH)")
    if magic[:4] != b"PAR1":  # not parquet at all (a CSV, a zip): not a damaged parquet file
        raise DataError(
            f"{path}: not a parquet file (it does not start with parquet's PAR1 magic); kit "
            "reads parquet: convert a CSV with polars.read_csv(PATH).write_parquet(NEW_PATH)")
    try:
        return parquet_schema(path)
    except pl.exceptions.DuplicateError as exc:  # a sound file Polars cannot read as a frame
        raise DataError(
            f"{path}: two columns have the same name ({_first_line(exc)}); give each column "
            "its own name (pyarrow reads the file: pyarrow.parquet.read_table(PATH)"
            ".rename_columns(...))"
        ) from None
    except Exception as exc:  # polars raises several unrelated types for bad files
        raise DataError(
            f"{path}: not a readable parquet file ({_first_line(exc)}); it may be truncated or "
            "corrupt: re-download or regenerate it"
        ) from None


def combine_hint(folder: Path) -> str:
    """What to do with a folder holding parquet files (r304): a partitioned data set's parts
    (hive folders such as seq_ix=0/, Spark's or pyarrow's output) are combined into one file;
    files side by side may be separate files (train and valid) or parts. "" for a folder
    without any."""
    if next(folder.rglob("*.parquet"), None) is None:
        return ""
    combine = (f"polars.read_parquet(\"{folder}/**/*.parquet\", hive_partitioning=True)"
               ".select(SPEC_COLUMNS).sort(ID, STEP).write_parquet(\"one.parquet\"), with the "
               "spec's columns in its order (kit spec show lists them)")
    hive = any(d.is_dir() and "=" in d.name for d in folder.iterdir())
    files = sorted(f.name for f in folder.glob("*.parquet") if f.is_file())
    if hive or not files:
        return (f". To combine the parts of this partitioned data set into one: {combine}: a "
                "hive-partitioned folder (seq_ix=0/...) keeps its partition column in the "
                "folder names, not in the files, and hive_partitioning brings it back, perhaps "
                "as the last column; the parts come in name order (seq_ix=10 before "
                "seq_ix=2), hence the sort")
    shown = ", ".join(files[:3]) + (f", ... ({len(files)} in all)" if len(files) > 3 else "")
    return (f". It holds {shown}: pass one of them (e.g. {folder / files[0]}), or, if they are "
            f"parts of one data set, combine them into one: {combine}")


def unreadable_data(path: Path, exc: Exception) -> DataError:
    """The error for a file whose footer reads but whose data pages do not."""
    return DataError(f"{path}: the parquet footer reads but its data does not "
                     f"({_first_line(exc)}); the file is corrupt: re-download or regenerate it")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
