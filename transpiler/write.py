"""Write the rendered package atomically: build beside the target, then rename.

On any failure nothing partial remains and an existing package is left untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .emit import RenderedPackage
from .errors import TranspileError
from .weights_file import write_file

BINARY_HASHES = "binaries.json"


def _materialize(rendered: RenderedPackage, folder: Path) -> None:
    for relative, data in rendered.files.items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, data)
    hashes = {}
    for relative, source in sorted(rendered.binaries.items()):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(source, bytes):
            path.write_bytes(source)
        else:
            shutil.copyfile(source, path)
        hashes[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(rendered.manifest, indent=2, sort_keys=True) + "\n")
    (folder / BINARY_HASHES).write_text(json.dumps(hashes, indent=2, sort_keys=True) + "\n")
    _fixed_modes(folder)


# Whatever the umask (and mkdtemp's 0700): a package another user can read, the same modes on
# every machine, as a wheel installs them.
FOLDER_MODE, FILE_MODE = 0o755, 0o644


def _fixed_modes(folder: Path) -> None:
    folder.chmod(FOLDER_MODE)
    for path in folder.rglob("*"):
        path.chmod(FOLDER_MODE if path.is_dir() else FILE_MODE)


def check_writable(out_dir: Path) -> None:
    """Fail before the long compile if the output folder cannot be written."""
    existing = out_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise TranspileError(f"cannot write to {out_dir}: {existing} is not a writable folder; choose another -o")


def write_package(rendered: RenderedPackage, target: Path) -> None:
    target = Path(target)
    check_writable(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.new-", dir=target.parent))
    except OSError as error:
        raise TranspileError(f"cannot write to {target.parent}: {error.strerror}; choose another -o") from error
    retired = None
    try:
        _materialize(rendered, staging)
        if target.exists():
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rename(target, retired / target.name)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if retired is not None and not target.exists():
            os.rename(retired / target.name, target)
        raise
    finally:
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)


def materialize_to(rendered: RenderedPackage, folder: Path) -> None:
    """Write into a fresh folder (used by --check)."""
    folder.mkdir(parents=True)
    _materialize(rendered, folder)
