"""Point the ROS 2 wheels' rosidl Python export files at this interpreter's include dirs.

The PyPI message wheels ship `share/*/cmake/export_*__rosidl_generator_pyExport.cmake`
files whose include paths name the wheel builder's `/opt/python/...` tree, so building a
message package that depends on them fails in CMake. Rewriting them is idempotent.
"""

from __future__ import annotations

import re
import sys
import sysconfig
from pathlib import Path

import numpy

_BUILDER_PATH = re.compile(r"/opt/python/[^;\"]*")


def _replacement(path: str) -> str:
    if path.rstrip("/").endswith("/include"):
        return numpy.get_include() if "numpy" in path else sysconfig.get_paths()["include"]
    if "/include/python" in path:
        return sysconfig.get_paths()["include"]
    raise ValueError(f"unexpected builder path in rosidl export file: {path}")


def main(prefix: str) -> int:
    files = sorted(Path(prefix, "share").glob("*/cmake/export_*__rosidl_generator_pyExport.cmake"))
    changed = 0
    for file in files:
        text = file.read_text()
        fixed = _BUILDER_PATH.sub(lambda m: _replacement(m.group(0)), text)
        if fixed != text:
            file.write_text(fixed)
            changed += 1
    print(f"rosidl exports: {changed} of {len(files)} files repaired")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else sys.prefix))
