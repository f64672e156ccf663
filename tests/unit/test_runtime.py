"""transpiler/runtime/runtime.py directly: the safetensors reader and its errors, where
load(weights=...) finds tensors, and the input checks (no package, no transpile)."""

from __future__ import annotations

import json
import struct

import pytest
import safetensors.torch
import torch

from transpiler.runtime import runtime


@pytest.fixture
def tensors():
    generator = torch.Generator().manual_seed(0)
    return {
        "a": torch.randn(3, 4, generator=generator),
        "b": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "c": torch.randn(5, generator=generator).to(torch.bfloat16),
        "empty": torch.zeros(0, 2),
    }


def _write(path, tensors):
    safetensors.torch.save_file(tensors, str(path))
    return path


def test_header_and_mapped_tensors_equal_what_was_saved(tmp_path, tensors):
    path = _write(tmp_path / "w.safetensors", tensors)
    header = runtime.read_header(path)
    assert {name: (e.dtype, e.shape) for name, e in header.items()} == {
        name: (t.dtype, tuple(t.shape)) for name, t in tensors.items()
    }
    mapped = runtime.map_file(path, list(header.values()))
    for name, tensor in tensors.items():
        assert torch.equal(mapped[name], tensor), name


@pytest.mark.parametrize("staging", [1, 7, 64, 1 << 20])
def test_staged_read_equals_the_file_at_any_buffer_size(tmp_path, tensors, staging):
    path = _write(tmp_path / "w.safetensors", tensors)
    entries = list(runtime.read_header(path).values())
    read = runtime._read_staged(path, entries, "cpu", staging_bytes=staging)
    for name, tensor in tensors.items():
        assert torch.equal(read[name], tensor), name


def _bytes(path, content: bytes):
    path.write_bytes(content)
    return path


def _raw(path, header: bytes, size_field=None, body=b""):
    size = len(header) if size_field is None else size_field
    path.write_bytes(struct.pack("<Q", size) + header + body)
    return path


@pytest.mark.parametrize(
    "content, message",
    [
        (lambda p: _bytes(p, b"abc"), "shorter than a header"),
        (lambda p: _raw(p, b"{}", size_field=1000), "a header of 1000 bytes in a file of 10"),
        (lambda p: _raw(p, b"{not json"), "its header is not JSON"),
        (lambda p: _raw(p, b"[1, 2]"), "its header is not a JSON object"),
        (
            lambda p: _raw(p, json.dumps({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()),
            "tensor 't' runs past the end of the file",
        ),
    ],
)
def test_files_that_are_not_safetensors_are_named(tmp_path, content, message):
    path = content(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match=f"is not a safetensors file \\({message}"):
        runtime.read_header(path)


def test_unknown_dtype_and_missing_file(tmp_path):
    header = json.dumps({"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path = _raw(tmp_path / "c.safetensors", header, body=b"\0" * 8)
    with pytest.raises(ValueError, match="'t' in .* has dtype C64, which this package cannot read"):
        runtime.read_header(path)
    with pytest.raises(FileNotFoundError, match="weights: cannot read"):
        runtime.read_header(tmp_path / "nowhere.safetensors")


def test_checkpoint_sources(tmp_path, tensors):
    assert runtime.Checkpoint(tensors).find([("a", "a")])[0][1] is tensors["a"]
    folder = tmp_path / "hf"
    folder.mkdir()
    _write(folder / "one.safetensors", {"a": tensors["a"]})
    _write(folder / "two.safetensors", {"b": tensors["b"]})
    found = dict(runtime.Checkpoint(folder).find([("a", "a"), ("b", "b")]))
    assert set(found) == {"a", "b"} and found["b"].file.name == "two.safetensors"
    # With an index, only the shards it names are read.
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "one.safetensors"}}))
    assert set(runtime.Checkpoint(folder).entries) == {"a"}
    # A checkpoint key or, failing that, the model's own state-dict key.
    assert runtime.Checkpoint(tensors).find([("model.a", "a")])[0][0] == "a"


def test_checkpoint_errors(tmp_path, tensors):
    with pytest.raises(TypeError, match="expected a state_dict, a .safetensors file or a folder of them, got int"):
        runtime.Checkpoint(3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        runtime.Checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no .safetensors files"):
        runtime.Checkpoint(empty)
    (empty / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(ValueError, match="is not a Hugging Face index"):
        runtime.Checkpoint(empty)
    (empty / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "gone.safetensors"}}))
    with pytest.raises(FileNotFoundError, match="names gone.safetensors, which is not in"):
        runtime.Checkpoint(empty)
    with pytest.raises(KeyError, match="missing 'x' and 1 more in the state_dict"):
        runtime.Checkpoint(tensors).find([("x", "x"), ("y", "y"), ("a", "a")])


def test_load_weights_checks_dtype_and_shape_before_reading(tmp_path, tensors):
    specs = (("a", "a", torch.float32, (3, 4)), ("b", "b", torch.int64, (2, 3)))
    loaded = runtime.load_weights(specs, False, _write(tmp_path / "w.safetensors", tensors))
    assert torch.equal(loaded[0], tensors["a"]) and torch.equal(loaded[1], tensors["b"])
    with pytest.raises(ValueError, match=r"'a' is torch.float32 \(3, 4\), the package expects torch.float16 \(3, 4\)"):
        runtime.load_weights((("a", "a", torch.float16, (3, 4)),), False, tensors)
    with pytest.raises(TypeError, match="'a' is a list, not a tensor"):
        runtime.load_weights((("a", "a", torch.float32, (3, 4)),), False, {"a": [1]})
    with pytest.raises(ValueError, match="ships no weights .*pass load\\(weights=...\\)"):
        runtime.load_weights(specs, False, None)


def test_own_mutated_copies_only_written_buffers(tensors):
    owned = runtime.own_mutated((tensors["a"], tensors["b"]), ("a", "b"), ("b",))
    assert owned[0] is tensors["a"] and owned[1] is not tensors["b"] and torch.equal(owned[1], tensors["b"])


def test_check_input():
    x = torch.zeros(2, 3)
    assert runtime.check_input(x, "x", torch.float32, (None, 3), "cpu") is x  # as it is: no copy
    with pytest.raises(TypeError, match="x: expected a tensor, got list"):
        runtime.check_input([1], "x", torch.float32, (None, 3), "cpu")
    with pytest.raises(ValueError, match="x: expected a cuda tensor, got one on cpu"):
        runtime.check_input(x, "x", torch.float32, (None, 3), "cuda")
    with pytest.raises(TypeError, match="x: expected dtype torch.int64, got torch.float32"):
        runtime.check_input(x, "x", torch.int64, (None, 3), "cpu")
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 4\), got \(2, 3\)"):
        runtime.check_input(x, "x", torch.float32, (None, 4), "cpu")
    with pytest.raises(ValueError, match=r"x: expected shape \(N, 3\), got \(6,\)"):
        runtime.check_input(x.view(6), "x", torch.float32, (None, 3), "cpu")
    strided = torch.arange(12.0).reshape(3, 4)[:, :3]
    copied = runtime.check_input(strided, "x", torch.float32, (None, 3), "cpu")
    assert copied.is_contiguous() and torch.equal(copied, strided)
    with pytest.raises(ValueError, match="x: the forward writes it in place, so it must be contiguous"):
        runtime.check_input(strided, "x", torch.float32, (None, 3), "cpu", in_place=True)


def test_machine_mismatch_names_what_differs():
    found = torch.__version__.split("+")[0]
    with pytest.raises(runtime.MachineMismatch, match="was built for torch 0.0.1, found"):
        runtime.check_machine("0.0.1", "3.11", "x86_64", ())
    import platform
    import sys

    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    with pytest.raises(runtime.MachineMismatch, match="built for Python 2.7"):
        runtime.check_machine(found, "2.7", platform.machine(), ())
    with pytest.raises(runtime.MachineMismatch, match="CPU features this machine lacks: no_such_flag"):
        runtime.check_machine(found, python, platform.machine(), ("no_such_flag",))
    runtime.check_machine(found, python, platform.machine(), ())


def test_import_op_modules_imports_each_module_and_refuses_in_one_line():
    runtime.import_op_modules((("aten::add", "json", None),))  # imported, and the op is there
    with pytest.raises(ImportError) as missing:
        runtime.import_op_modules((("vendor::fused", "no_such_vendor_module", "vendor-ops==1.2"),))
    message = str(missing.value)
    assert "\n" not in message
    assert message.startswith("the model calls op vendor::fused, which module no_such_vendor_module registers")
    assert message.endswith("pip install 'vendor-ops==1.2'")
    with pytest.raises(
        ImportError,
        match="vendor::fused, which module json no longer registers: put the folder holding json on sys.path",
    ):
        runtime.import_op_modules((("vendor::fused", "json", None),))


def test_import_op_modules_imports_the_import_modules_first(tmp_path, monkeypatch):
    """An op that a module named by --import registers through a helper module (the one
    recorded, as where its fake was registered) is found: the --import modules are imported
    before any op is checked."""
    import sys

    (tmp_path / "op_helper_for_test.py").write_text("")  # imports, registers nothing
    (tmp_path / "op_registering_for_test.py").write_text(
        "import torch\nlibrary = torch.library.Library('helpertest', 'DEF')\nlibrary.define('op(Tensor x) -> Tensor')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    required = (("helpertest::op", "op_helper_for_test", None),)
    try:
        with pytest.raises(ImportError, match="which module op_helper_for_test no longer registers"):
            runtime.import_op_modules(required)
        with pytest.raises(ImportError, match=r"module no_such_import_module \(--import\) cannot be imported"):
            runtime.import_op_modules(required, ("no_such_import_module",))
        runtime.import_op_modules(required, ("op_registering_for_test",))
        assert hasattr(torch.ops.helpertest, "op")
    finally:
        for name in ("op_helper_for_test", "op_registering_for_test"):
            sys.modules.pop(name, None)
