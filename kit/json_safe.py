"""JSON that strict readers accept: NaN and inf have no JSON form (json.dumps writes `NaN`,
which JSON.parse, jq and most other languages refuse), so they become null."""

from __future__ import annotations

import json
import math

import numpy as np


def json_safe(value):
    """`value` with non-finite floats as None, numpy scalars as Python ones, keys as str."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def dumps(value, **kwargs) -> str:
    """json.dumps of json_safe(value); raises rather than writing NaN."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)
