"""A wheel of an emitted package, built with the standard library alone (zipfile).

    transpile MODEL.py -o OUT --wheel DIST     (or: python -m transpiler.package_wheel OUT/NAME DIST)

The wheel holds the package as it was written (sources, manifest, weights, kernel binaries
and, on CUDA, cubins as package data), installs as the top-level module NAME, and says
what its binaries need: tagged for the CPython and platform they were built for
(cp311-cp311-linux_x86_64), requiring exactly the torch it was built with (and on CUDA the
Triton version; the CUDA version and GPU architecture, which pip cannot check, are named as
Requires-External and checked by load()), and the distributions whose modules register the
model's third-party ops. The same package gives the same bytes: entries sorted, every
timestamp 1980-01-01, fixed modes, and RECORD's hashes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import zipfile
from pathlib import Path

from .errors import TranspileError

_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip entry can hold
_GENERATOR = "transpile"


def wheel_version(manifest: dict) -> str:
    """A PEP 440 version naming the package's build: 0+ its fingerprint (what decides its
    behaviour), so two different builds never share a version."""
    return f"0+{manifest['fingerprint'][:16]}"


def wheel_tags(manifest: dict, has_extensions: bool) -> str:
    """python-abi-platform: the CPython the package checks at load(), its ABI where the
    package ships CPython extensions (the C++ kernels), and the platform of the binaries."""
    major, minor = manifest["python"].split(".")
    python = f"cp{major}{minor}"
    abi = python if has_extensions else "none"
    machine = manifest["machine"].lower().replace("-", "_")
    if machine == "amd64":
        machine = "x86_64"
    return f"{python}-{abi}-linux_{machine}"


def requirements(manifest: dict) -> list[str]:
    """Requires-Dist lines: the exact torch (a local build label such as +cpu is ignored by
    `==`), on CUDA the exact Triton, and the distributions of the op modules."""
    lines = [f"torch=={manifest['torch']}"]
    gpu = manifest.get("gpu") or {}
    if gpu.get("triton"):
        lines.append(f"triton=={gpu['triton']}")
    for required in manifest.get("required_ops", []):
        requirement = required.get("requirement")
        if requirement and requirement not in lines and not requirement.startswith("torch=="):
            lines.append(requirement)
    return lines


def _metadata(manifest: dict, distribution: str, version: str) -> str:
    major, minor = manifest["python"].split(".")
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {distribution}",
        f"Version: {version}",
        f"Summary: {manifest['model']['file']} compiled by transpile ({manifest['device']})",
        f"Requires-Python: =={major}.{minor}.*",
        *(f"Requires-Dist: {line}" for line in requirements(manifest)),
    ]
    gpu = manifest.get("gpu") or {}
    if gpu:
        lines.append(f"Requires-External: CUDA (=={gpu['cuda']})")
        lines.append(f"Requires-External: NVIDIA GPU of compute capability {gpu['arch'] // 10}.{gpu['arch'] % 10}")
    return "\n".join(lines) + "\n"


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _package_files(package_dir: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(package_dir.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            files[path.relative_to(package_dir).as_posix()] = path.read_bytes()
    return files


def _check_complete(package_dir: Path, files: dict[str, bytes]) -> None:
    """Every binary binaries.json names is there, unchanged (a wheel must not ship a package
    that load() would refuse)."""
    listed = json.loads(files.get("binaries.json", b"{}"))
    for relative, digest in sorted(listed.items()):
        data = files.get(relative)
        if data is None:
            raise TranspileError(f"{package_dir}: binary {relative} is missing; transpile again to rebuild it")
        if hashlib.sha256(data).hexdigest() != digest:
            raise TranspileError(f"{package_dir}: binary {relative} does not match binaries.json; transpile again")


def build_wheel(package_dir: Path, dist_dir: Path) -> Path:
    """Write DIST/NAME-VERSION-TAGS.whl of the emitted package at package_dir; return its path."""
    package_dir = Path(package_dir)
    manifest_path = package_dir / "manifest.json"
    if not manifest_path.is_file():
        raise TranspileError(f"{package_dir} is not an emitted package (no manifest.json); give OUT/NAME")
    manifest = json.loads(manifest_path.read_text())
    name = manifest["name"]
    files = _package_files(package_dir)
    _check_complete(package_dir, files)
    version = wheel_version(manifest)
    has_extensions = any(path.endswith(".so") for path in files)
    tags = wheel_tags(manifest, has_extensions)
    distribution = name  # a Python identifier: already a valid, normalized wheel name
    dist_info = f"{distribution}-{version}.dist-info"

    entries = {f"{name}/{relative}": data for relative, data in files.items()}
    entries[f"{dist_info}/METADATA"] = _metadata(manifest, distribution, version).encode()
    entries[f"{dist_info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: {_GENERATOR}\nRoot-Is-Purelib: false\nTag: {tags}\n"
    ).encode()
    entries[f"{dist_info}/top_level.txt"] = f"{name}\n".encode()
    record = [f"{path},{_record_hash(data)},{len(data)}" for path, data in sorted(entries.items())]
    record.append(f"{dist_info}/RECORD,,")
    entries[f"{dist_info}/RECORD"] = ("\n".join(record) + "\n").encode()

    dist_dir = Path(dist_dir)
    try:
        dist_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise TranspileError(
            f"--wheel {dist_dir}: cannot create the folder ({error.strerror}); choose another"
        ) from error
    wheel = dist_dir / f"{distribution}-{version}-{tags}.whl"
    partial = wheel.with_suffix(".whl.partial")
    try:
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
            # dist-info last, as the wheel spec recommends; everything else in sorted order.
            for path in sorted(entries, key=lambda p: (p.startswith(dist_info), p)):
                info = zipfile.ZipInfo(path, date_time=_EPOCH)
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # Unix, whatever the building machine
                archive.writestr(info, entries[path], compresslevel=9)
        partial.replace(wheel)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return wheel


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m transpiler.package_wheel OUT/NAME DIST", file=sys.stderr)
        return 2
    try:
        print(build_wheel(Path(args[0]), Path(args[1])))
    except TranspileError as error:
        print(f"transpile: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
