"""weights.safetensors streamed tensor by tensor (transpiler/weights_file.py): the same
bytes as safetensors.torch.save, the same hash as those bytes, and no second copy of the
weights while writing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import textwrap

import safetensors.torch
import torch

from transpiler import weights_file
from transpiler.weights_file import SafetensorsStream


def _every_dtype() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for number, (dtype, _) in enumerate(weights_file._DTYPES_IN_ORDER):
        values = torch.randint(0, 2 if dtype == torch.bool else 100, (3, 5), generator=generator)
        tensors[f"layer.{number}.weight"] = values.to(dtype)
    return tensors


def _expected(tensors: dict[str, torch.Tensor]) -> bytes:
    # What emit.py wrote before streaming: contiguous clones, saved in memory.
    return safetensors.torch.save({k: t.detach().cpu().contiguous().clone() for k, t in tensors.items()})


def test_every_dtype_gives_the_bytes_safetensors_writes(tmp_path):
    tensors = _every_dtype()
    stream = SafetensorsStream(tensors)
    expected = _expected(tensors)
    stream.write_to(tmp_path / "w.safetensors")
    assert (tmp_path / "w.safetensors").read_bytes() == expected
    assert stream.sha256() == hashlib.sha256(expected).hexdigest()
    assert stream.size == len(expected)
    loaded = safetensors.torch.load(expected)
    assert all(torch.equal(loaded[k].view(torch.uint8), t.view(torch.uint8)) for k, t in tensors.items())


def test_views_scalars_empty_and_tied_tensors_are_written_as_safetensors_does(tmp_path):
    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    tied = torch.randn(4, 4, dtype=torch.bfloat16)
    tensors = {
        "z.transposed": base.t(),  # not contiguous
        "a.sliced": base[1:5, ::2],
        "scalar": torch.tensor(3.5, dtype=torch.float64),
        "empty": torch.empty(0, 7),
        "embed.weight": tied,
        "lm_head.weight": tied,  # the same storage under two keys
        "Name-with.unicode_é": torch.ones(2, dtype=torch.int64),
        "param": torch.nn.Parameter(torch.randn(3, 2)),
    }
    stream = SafetensorsStream(tensors)
    assert stream.to_bytes() == _expected(tensors)


def test_big_tensors_stream_in_slices(monkeypatch):
    monkeypatch.setattr(weights_file, "_CHUNK", 1000)  # bytes per slice
    tensors = {"big": torch.randn(1234, 7), "small": torch.randn(3).to(torch.float16)}
    stream = SafetensorsStream(tensors)
    chunks = list(stream.chunks())
    assert len(chunks) > 30 and max(len(c) for c in chunks[1:]) <= 1000
    expected = _expected(tensors)
    assert b"".join(bytes(c) for c in chunks) == expected
    assert stream.sha256() == hashlib.sha256(expected).hexdigest()


def test_writing_holds_no_second_copy_of_the_weights(tmp_path):
    """256 MiB of weights, hashed and written: the process's peak resident memory grows by
    far less than the weights' size (building the file in memory, as before, adds twice it)."""
    script = textwrap.dedent(
        f"""
        import resource, torch
        from transpiler.weights_file import SafetensorsStream
        tensors = {{f"w{{i}}": torch.ones(8 << 20) for i in range(8)}}  # 8 x 32 MiB, resident
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        stream = SafetensorsStream(tensors)
        stream.sha256()
        stream.write_to({str(tmp_path / "w.safetensors")!r})
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print((after - before) // 1024)
        """
    )
    grown_mib = int(subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True).stdout)
    assert grown_mib < 96, grown_mib
    assert (tmp_path / "w.safetensors").stat().st_size == 256 * 2**20 + len(
        SafetensorsStream({f"w{i}": torch.ones(8 << 20) for i in range(8)}).header
    )


def test_an_unnamed_dtype_is_refused():
    import pytest

    with pytest.raises(ValueError, match="weight q: dtype torch.complex128 has no safetensors name"):
        SafetensorsStream({"q": torch.ones(2, dtype=torch.complex128)})
