"""Compare two emitted package trees, leaving out machine-specific binaries."""

from __future__ import annotations

import difflib
from pathlib import Path

# Built for the machine that ran the transpiler: not part of the golden record.
MACHINE_SPECIFIC = ("*.so", "*.cubin", "binaries.json")


def source_files(root: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and not any(path.match(p) for p in MACHINE_SPECIFIC):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
    return files


def diff_trees(expected_root: Path, actual_root: Path) -> list[str]:
    """One line per differing file: what is missing, extra, or changed (and how much)."""
    expected, actual = source_files(expected_root), source_files(actual_root)
    lines = []
    for path in sorted(expected.keys() | actual.keys()):
        if path not in actual:
            lines.append(f"only in {expected_root}: {path}")
        elif path not in expected:
            lines.append(f"only in the fresh transpile: {path}")
        elif expected[path] != actual[path]:
            try:
                old, new = expected[path].decode().splitlines(), actual[path].decode().splitlines()
                delta = list(difflib.unified_diff(old, new, lineterm="", n=0))
                added = sum(1 for d in delta if d.startswith("+") and not d.startswith("+++"))
                removed = sum(1 for d in delta if d.startswith("-") and not d.startswith("---"))
                lines.append(f"changed: {path} (+{added} -{removed} lines)")
            except UnicodeDecodeError:
                lines.append(f"changed: {path} (binary)")
    return lines
