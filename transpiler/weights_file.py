"""weights.safetensors streamed tensor by tensor: the header first, then each tensor's
bytes straight from its own storage, so that writing (and hashing) the file never holds a
second copy of the weights (a 1B model's 2.2 GB file was built in memory whole, then
written: two copies, 13 of the 17 s of rendering).

The bytes are exactly those of `safetensors.torch.save` (tested): an 8-byte little-endian
header length, the JSON header (compact, padded with spaces to a multiple of 8), then the
data, tensors ordered by dtype (widest first, as safetensors orders them for alignment)
and then by name.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

# safetensors' dtype names, in its own order (its Rust `Dtype` enum): files list tensors
# from the last of these to the first, and by name within a dtype.
_DTYPES_IN_ORDER = (
    (torch.bool, "BOOL"),
    (torch.uint8, "U8"),
    (torch.int8, "I8"),
    (torch.float8_e5m2, "F8_E5M2"),
    (torch.float8_e4m3fn, "F8_E4M3"),
    (torch.float8_e4m3fnuz, "F8_E4M3FNUZ"),
    (torch.float8_e5m2fnuz, "F8_E5M2FNUZ"),
    (torch.int16, "I16"),
    (torch.uint16, "U16"),
    (torch.float16, "F16"),
    (torch.bfloat16, "BF16"),
    (torch.int32, "I32"),
    (torch.uint32, "U32"),
    (torch.float32, "F32"),
    (torch.complex64, "C64"),
    (torch.float64, "F64"),
    (torch.int64, "I64"),
    (torch.uint64, "U64"),
)
_NAME = {dtype: name for dtype, name in _DTYPES_IN_ORDER}
_RANK = {dtype: rank for rank, (dtype, _) in enumerate(_DTYPES_IN_ORDER)}

# Bytes handed to the file or the hash at a time: big tensors go through in slices, so a
# tensor that must first be made contiguous or moved to the CPU is the only copy made.
_CHUNK = 64 << 20


class SafetensorsStream:
    """A safetensors file described by its tensors, written or hashed without building it."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        for key, tensor in tensors.items():
            if tensor.dtype not in _NAME:
                raise ValueError(f"weight {key}: dtype {tensor.dtype} has no safetensors name")
        self._tensors = sorted(tensors.items(), key=lambda item: (-_RANK[item[1].dtype], item[0]))
        self.header = self._header()
        self.size = len(self.header) + sum(_nbytes(t) for _, t in self._tensors)
        self._sha256: str | None = None

    def _header(self) -> bytes:
        entries, offset = {}, 0
        for key, tensor in self._tensors:
            end = offset + _nbytes(tensor)
            entries[key] = {"dtype": _NAME[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, end]}
            offset = end
        text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        return struct.pack("<Q", len(text)) + text

    def chunks(self) -> Iterator[memoryview]:
        yield memoryview(self.header)
        for _, tensor in self._tensors:
            yield from _tensor_chunks(tensor)

    def sha256(self) -> str:
        if self._sha256 is None:
            digest = hashlib.sha256()
            for chunk in self.chunks():
                digest.update(chunk)
            self._sha256 = digest.hexdigest()
        return self._sha256

    def write_to(self, path: Path) -> None:
        with open(path, "wb") as file:
            file.writelines(self.chunks())

    def to_bytes(self) -> bytes:
        """The whole file in memory (tests; small files)."""
        return b"".join(bytes(chunk) for chunk in self.chunks())


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _tensor_chunks(tensor: torch.Tensor) -> Iterator[memoryview]:
    tensor = tensor.detach().cpu()  # the tensor itself when it is already in host memory
    flat = tensor.contiguous().reshape(-1)
    if flat.numel() == 0:
        return
    raw = flat.view(torch.uint8)
    for start in range(0, raw.numel(), _CHUNK):
        yield memoryview(raw[start : start + _CHUNK].numpy())


def file_sha256(data) -> str:
    """sha256 of a rendered file: bytes, or a stream hashed as it is read."""
    if isinstance(data, SafetensorsStream):
        return data.sha256()
    return hashlib.sha256(data).hexdigest()


def as_bytes(data) -> bytes:
    """A rendered file's content in memory (tests; a stream is built whole)."""
    return data.to_bytes() if isinstance(data, SafetensorsStream) else data


def write_file(path: Path, data) -> None:
    """Write a rendered file: bytes, or a stream written tensor by tensor."""
    if isinstance(data, SafetensorsStream):
        data.write_to(path)
    else:
        path.write_bytes(data)
