"""Build MODEL.py's model without parameter storage, when the package ships no parameters
(--weights none, --tensor-parallel): torch.export and Inductor need each parameter's
shape, dtype, device and strides, never its values.

The rule (README, "The model.py contract"): while MODEL.py runs, every `nn.Parameter` a
module registers is replaced by a fake tensor of the same shape, dtype, device and
strides (torch's FakeTensor: metadata only, no memory), keeping the parameter's own
attributes (`tp_dim`, say). Initialization (`torch.nn.init`, `copy_`, `load_state_dict`)
runs on the fakes and does nothing. Buffers, constants and example inputs stay real: a
rotary table computed in `__init__` is real and small, and the package ships it. So a
model file may do anything with its parameters except read their values: a constructor
that branches on a parameter's value fails with a one-line error, and a buffer or
constant computed from parameters (which would be shipped with fake values) is refused.
"""

from __future__ import annotations

import contextlib

import torch

_mode = None


def _fake_mode():
    global _mode
    if _mode is None:
        from torch._subclasses.fake_tensor import FakeTensorMode

        # Real tensors may meet fakes while MODEL.py builds the model (`parameter.copy_(x)`).
        _mode = FakeTensorMode(allow_non_fake_inputs=True)
    return _mode


def is_fake(tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(tensor, FakeTensor)


def fake_like(tensor: torch.Tensor, device=None) -> torch.Tensor:
    """A tensor with `tensor`'s shape, dtype, device (or `device`) and strides, and no storage."""
    from torch._subclasses.fake_tensor import FakeTensor

    meta = torch.empty_strided(tensor.shape, tensor.stride(), dtype=tensor.dtype, device="meta")
    return FakeTensor(_fake_mode(), meta, torch.device(device) if device is not None else tensor.device)


def model_to(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """model.to(device), for a model whose parameters may be fakes (which Module.to cannot
    move: it swaps tensors, and a fake is referenced by its mode)."""
    if not any(is_fake(p) for p in model.parameters()):
        return model.to(device)
    kind = torch.device(device).type
    for module in model.modules():
        for name, parameter in module._parameters.items():
            if parameter is not None and parameter.device.type != kind:
                if is_fake(parameter):
                    module._parameters[name] = fake_parameter(parameter, device)
                else:
                    module._parameters[name] = torch.nn.Parameter(
                        parameter.detach().to(device), parameter.requires_grad
                    )
        for name, buffer in module._buffers.items():
            if buffer is not None and buffer.device.type != kind:
                module._buffers[name] = buffer.to(device)
    return model


def fake_parameter(parameter: torch.nn.Parameter, device=None, dtype=None) -> torch.nn.Parameter:
    like = parameter.detach()
    if dtype is not None and dtype != like.dtype:
        like = torch.empty_strided(like.shape, like.stride(), dtype=dtype, device="meta")
    fake = torch.nn.Parameter(fake_like(like, device or parameter.device), requires_grad=parameter.requires_grad)
    own = set(vars(fake))  # a fake's own fields (its device, its mode) stay its own
    for name, value in vars(parameter).items():  # tp_dim and the like
        if name not in own:
            setattr(fake, name, value)
    return fake


@contextlib.contextmanager
def parameters_as_fakes():
    """While active, a parameter registered on any module is stored as a fake; the real
    tensor it was made from (usually `torch.empty`, never touched) is dropped at once."""
    original = torch.nn.Module.register_parameter

    def register_parameter(module, name, parameter):
        if parameter is not None and type(parameter) is torch.nn.Parameter and not is_fake(parameter):
            parameter = fake_parameter(parameter)
        original(module, name, parameter)

    original_apply = torch.nn.Module._apply
    # Fakes converted in place by `.to(dtype)` and the like: old id -> new, for one
    # top-level call (a parameter shared by two modules stays shared).
    moved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    depth = [0]

    def apply(module, fn, recurse=True):
        # Module._apply swaps a fake parameter's tensor in place, which torch refuses (the
        # fake mode keeps a reference to it): put a new fake in its slot instead.
        fakes = {key: p for key, p in module._parameters.items() if p is not None and is_fake(p)}
        for key in fakes:
            module._parameters[key] = None
        depth[0] += 1
        try:
            result = original_apply(module, fn, recurse)
            for key, parameter in fakes.items():
                if id(parameter) in moved:
                    module._parameters[key] = moved[id(parameter)][1]
                    continue
                with torch.no_grad():
                    applied = fn(parameter)
                new = fake_parameter(parameter, applied.device, applied.dtype) if is_fake(applied) else applied
                module._parameters[key] = new
                # As Module._apply does with real tensors: a conversion on one device changes
                # the parameter in place (a shared one stays shared); one across devices
                # (meta -> cpu: to_empty) gives each module a new parameter.
                if (
                    applied.device.type == parameter.device.type
                    and not torch.__future__.get_overwrite_module_params_on_conversion()
                ):
                    moved[id(parameter)] = (parameter, new)
        except BaseException:
            for key, parameter in fakes.items():
                if module._parameters.get(key) is None:
                    module._parameters[key] = parameter
            raise
        finally:
            depth[0] -= 1
            if depth[0] == 0:
                moved.clear()
        return result

    torch.nn.Module.register_parameter = register_parameter
    torch.nn.Module._apply = apply
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original
        torch.nn.Module._apply = original_apply


def real_tensors_only(tensors: dict[str, torch.Tensor], where: str) -> None:
    """Tensors the package ships (constants, non-persistent buffers) must have real values."""
    for key, tensor in tensors.items():
        if is_fake(tensor):
            from .errors import TranspileError

            raise TranspileError(
                f"{where}: {key} is computed from parameters, which --weights none and --tensor-parallel build "
                "without values, yet the package ships it; compute it from plain tensors (as a rotary table "
                "computed in __init__ is), make it a persistent buffer, or transpile with --weights embed"
            )
