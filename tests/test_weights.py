"""Weights apart from code: --weights none, load(weights=...) from a state_dict, a
safetensors file or a Hugging Face-style sharded folder, with --checkpoint-prefix, and
one clear error for each bad checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import EXAMPLES, ROOT, imported_package, inputs_at, load_model_module, transpile_once
from safetensors.torch import save_file

MLP = ROOT / "examples" / "mlp" / "model.py"


@pytest.fixture(scope="module")
def bare(shared_dir):
    """The mlp example without weights, its checkpoint keys without the wrapper's `net.`."""
    args = [str(MLP), "--name", "mlp_bare", "--ranges", "1-128", "--weights", "none", "--checkpoint-prefix", "net."]
    return transpile_once(shared_dir, "mlp_bare", args)


@pytest.fixture(scope="module")
def eager():
    return load_model_module(ROOT / EXAMPLES["mlp"][0]).model.eval()


def _checkpoint(eager):
    """The eager model's weights under a checkpoint's names (no `net.` prefix)."""
    return {key.removeprefix("net."): tensor.detach().clone() for key, tensor in eager.state_dict().items()}


def _check_same(package, compiled, eager):
    inputs = inputs_at(load_model_module(MLP).example_inputs, package.INPUTS, 37)
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), eager(*inputs), rtol=1e-4, atol=1e-5)


def test_bare_package_ships_no_weights_and_asks_for_them(bare):
    folder = bare / "mlp_bare"
    assert not (folder / "weights.safetensors").exists()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["weights"]["embedded"] is False
    assert manifest["weights"]["tensors"]["net.0.weight"]["checkpoint_key"] == "0.weight"
    with imported_package(bare, "mlp_bare") as package:
        with pytest.raises(
            ValueError, match=r"ships no weights \(transpiled with --weights none\): pass load\(weights=...\)"
        ):
            package.load()


def test_weights_from_state_dict_file_and_sharded_folder(bare, eager, tmp_path):
    checkpoint = _checkpoint(eager)
    save_file(checkpoint, tmp_path / "model.safetensors")
    shards = tmp_path / "sharded"
    shards.mkdir()
    keys = sorted(checkpoint)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for file_name, shard_keys in halves.items():
        save_file({key: checkpoint[key] for key in shard_keys}, shards / file_name)
    weight_map = {key: name for name, shard_keys in halves.items() for key in shard_keys}
    (shards / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with imported_package(bare, "mlp_bare") as package:
        for source in (checkpoint, tmp_path / "model.safetensors", str(tmp_path / "model.safetensors"), shards):
            _check_same(package, package.load(weights=source), eager)


def test_bad_checkpoints_get_one_line_naming_the_tensor(bare, eager, tmp_path):
    checkpoint = _checkpoint(eager)
    with imported_package(bare, "mlp_bare") as package:
        missing = dict(checkpoint)
        del missing["2.bias"]
        with pytest.raises(KeyError, match=r"weights: missing '2.bias' in the state_dict"):
            package.load(weights=missing)
        wrong_shape = {**checkpoint, "0.weight": torch.zeros(3, 3)}
        with pytest.raises(ValueError, match=r"weights: '0.weight' is torch.float32 \(3, 3\), the package expects"):
            package.load(weights=wrong_shape)
        wrong_dtype = {**checkpoint, "0.bias": checkpoint["0.bias"].double()}
        with pytest.raises(ValueError, match=r"weights: '0.bias' is torch.float64"):
            package.load(weights=wrong_dtype)
        with pytest.raises(FileNotFoundError, match="does not exist"):
            package.load(weights=tmp_path / "nowhere.safetensors")
        (tmp_path / "empty").mkdir()
        with pytest.raises(FileNotFoundError, match="holds no .safetensors files"):
            package.load(weights=tmp_path / "empty")
        with pytest.raises(TypeError, match="expected a state_dict, a .safetensors file or a folder"):
            package.load(weights=42)
        save_file({k: v for k, v in checkpoint.items() if k != "0.weight"}, tmp_path / "partial.safetensors")
        with pytest.raises(KeyError, match=r"missing '0.weight' in .*partial.safetensors"):
            package.load(weights=tmp_path / "partial.safetensors")


def test_non_persistent_buffers_come_from_the_package(example_out):
    """serving_llama's rotary frequencies are a non-persistent buffer: not in a state_dict."""
    out = example_out("serving_llama")
    reference = load_model_module(ROOT / EXAMPLES["serving_llama"][0]).model
    assert "inv_freq" not in reference.state_dict()
    from conftest import EXAMPLE_PATHS

    with imported_package(out, "serving_llama", EXAMPLE_PATHS) as package:
        assert "inv_freq" in package.WEIGHT_KEYS and "inv_freq" not in package.REPLACEABLE_WEIGHTS
        package.load(weights=reference.state_dict())


def test_single_file_folder_and_embedded_package_take_checkpoints(bare, eager, example_out, tmp_path):
    """A folder holding one model.safetensors (no index); and a package with its weights
    embedded takes every kind of source too, in place of its own."""
    checkpoint = _checkpoint(eager)
    single = tmp_path / "single"
    single.mkdir()
    save_file(checkpoint, single / "model.safetensors")
    with imported_package(bare, "mlp_bare") as package:
        _check_same(package, package.load(weights=single), eager)
        # The model's own state_dict() (keys with the `net.` prefix) serves as well.
        _check_same(package, package.load(weights=eager.state_dict()), eager)

    halved = {key: tensor * 0.5 for key, tensor in eager.state_dict().items()}
    reference = load_model_module(MLP).model.eval()
    reference.load_state_dict(halved)
    save_file(halved, tmp_path / "halved.safetensors")
    shards = tmp_path / "halved-shards"
    shards.mkdir()
    keys = sorted(halved)
    save_file({k: halved[k] for k in keys[:2]}, shards / "a.safetensors")
    save_file({k: halved[k] for k in keys[2:]}, shards / "b.safetensors")
    (shards / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {k: "a.safetensors" if k in keys[:2] else "b.safetensors" for k in keys}})
    )
    with imported_package(example_out("mlp"), "mlp") as package:
        for source in (halved, tmp_path / "halved.safetensors", shards):
            _check_same(package, package.load(weights=source), reference)
        _check_same(package, package.load(), eager)  # its own weights, still


def _raw_safetensors(path, header: dict, data: bytes):
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + data)


def test_broken_checkpoint_files_get_one_line(bare, eager, tmp_path):
    checkpoint = _checkpoint(eager)
    shards = tmp_path / "shards"
    shards.mkdir()
    save_file(checkpoint, shards / "model-1.safetensors")
    (shards / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {key: "model-2.safetensors" for key in checkpoint}})
    )
    bad_index = tmp_path / "bad-index"
    bad_index.mkdir()
    (bad_index / "model.safetensors.index.json").write_text('{"metadata": {}}')
    pickled = tmp_path / "pytorch_model.bin"
    torch.save(checkpoint, pickled)
    truncated = tmp_path / "truncated.safetensors"
    save_file(checkpoint, truncated)
    truncated.write_bytes(truncated.read_bytes()[:-16])
    odd_dtype = tmp_path / "odd.safetensors"
    _raw_safetensors(odd_dtype, {"0.weight": {"dtype": "F4", "shape": [1], "data_offsets": [0, 1]}}, b"\0")
    cases = [
        (shards, FileNotFoundError, r"model.safetensors.index.json names model-2.safetensors, which is not in"),
        (bad_index, ValueError, r"is not a Hugging Face index \(a JSON object with a weight_map\)"),
        (
            pickled,
            ValueError,
            r"pytorch_model.bin is not a safetensors file \(.*\); pass .safetensors files or a state_dict",
        ),
        (truncated, ValueError, r"truncated.safetensors is not a safetensors file \(tensor '.*' runs past the end"),
        (odd_dtype, ValueError, r"'0.weight' in .*odd.safetensors has dtype F4, which this package cannot read"),
    ]
    with imported_package(bare, "mlp_bare") as package:
        for source, error, message in cases:
            with pytest.raises(error, match=message) as caught:
                package.load(weights=source)
            assert "\n" not in str(caught.value)


def test_staged_reads_give_the_file_tensors_whatever_the_buffer_size(bare, tmp_path):
    """The GPU path (one pass through two staging buffers), run on the CPU with buffers
    smaller than, equal to and larger than the tensors, which straddle their edges."""
    from pathlib import Path

    generator = torch.Generator().manual_seed(0)
    tensors = {
        "big": torch.randn(37, 5, generator=generator),
        "ids": torch.arange(10, dtype=torch.int64),
        "scalar": torch.tensor(3.5, dtype=torch.bfloat16),
        "empty": torch.zeros(0, 4),
        "mask": torch.rand(3, 3, generator=generator) > 0.5,
        "half": torch.randn(7, generator=generator).half(),
        "fp8": torch.randn(11, generator=generator).to(torch.float8_e4m3fn),
    }
    path = tmp_path / "mixed.safetensors"
    save_file(tensors, path)
    with imported_package(bare, "mlp_bare") as package:
        entries = list(package.runtime.read_header(Path(path)).values())
        for staging in (1, 3, 8, 40, 1 << 20):
            got = package.runtime._read_staged(Path(path), entries, "cpu", staging_bytes=staging)
            assert got.keys() == tensors.keys()
            for name, expected in tensors.items():
                assert got[name].dtype == expected.dtype and got[name].shape == expected.shape, (staging, name)
                assert torch.equal(got[name].view(-1).view(torch.uint8), expected.view(-1).view(torch.uint8)), (
                    staging,
                    name,
                )
