"""A third-party op registered the production way (torch.library define + impl): the
transpiler keeps it, and the package imports this module at load()."""

import torch

_lib = torch.library.Library("opaquelib", "DEF")
_lib.define("soft_clamp(Tensor x, float limit) -> Tensor")


def soft_clamp(x: torch.Tensor, limit: float) -> torch.Tensor:
    return torch.tanh(x / limit) * limit


def _soft_clamp_fake(x, limit):
    return torch.empty_like(x)


_lib.impl("soft_clamp", soft_clamp, "CompositeExplicitAutograd")
_lib._register_fake("soft_clamp", _soft_clamp_fake)
