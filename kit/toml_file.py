"""Reading the TOML files users write (experiments, specs, ensembles) and kit writes (configs)."""

from __future__ import annotations

import codecs
import tomllib
from pathlib import Path

from kit.errors import KitError


def read_toml(path: Path, error: type[KitError]) -> dict:
    """A TOML file as a dict. A file that is not UTF-8 text or not valid TOML raises `error`
    naming the file; a UTF-8 byte order mark (editors on Windows write one) is accepted."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        # utf-8-sig counts exc.start from after a byte order mark, the file's bytes from before
        at = exc.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        raise error(f"{path}: not UTF-8 text (byte 0x{data[at]:02x} at position {at}); "
                    "save it as UTF-8") from None
    return parse_toml(text, str(path), error)


def parse_toml(text: str, source: str, error: type[KitError]) -> dict:
    """TOML text as a dict; invalid TOML raises `error` naming `source`."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{source}: not valid TOML: {exc}") from None
