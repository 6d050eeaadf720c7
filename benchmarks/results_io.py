"""Where the benchmark scripts keep what they measured: one JSON file each under results/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_result(name: str, data: Any) -> Path:
    """`data` as indented JSON in results/NAME.json (numpy scalars as floats); prints the path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(data, indent=2, default=float) + "\n")
    print(f"wrote {out}")
    return out
