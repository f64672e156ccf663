"""Ops of a transpiled package: attention as one opaque op, `transpile::sdpa`.

The model's calls of torch.nn.functional.scaled_dot_product_attention were captured as
this op (vLLM traces attention the same way), so torch.export never ran sdpa's device
meta functions, whose guards can pin a dynamic sequence length. It runs exactly what
the model ran: scaled_dot_product_attention, its output made contiguous (the layout the
compiled pieces after it were built for).

Registered with torch.library define + impl, so calling it imports nothing beyond
torch; defined once per process, whichever transpiled package comes first.
Copied verbatim into every package from transpiler/runtime/ by transpile; do not edit.
"""

import torch
import torch.nn.functional as F

SCHEMA = (
    "sdpa(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, "
    "bool is_causal=False, float? scale=None, bool enable_gqa=False) -> Tensor"
)


def sdpa(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
):
    kwargs = {"enable_gqa": True} if enable_gqa else {}
    out = F.scaled_dot_product_attention(
        query,
        key,
        value,
        attn_mask=attn_mask,
        dropout_p=dropout_p,
        is_causal=is_causal,
        scale=scale,
        **kwargs
    )
    return out.contiguous()


def sdpa_fake(
    query,
    key,
    value,
    attn_mask=None,
    dropout_p=0.0,
    is_causal=False,
    scale=None,
    enable_gqa=False,
):
    return query.new_empty((*query.shape[:-1], value.shape[-1]))


def _defined() -> bool:
    try:
        torch.ops.transpile.sdpa.default  # noqa: B018 (the lookup raises while it is undefined)
    except (AttributeError, RuntimeError):
        return False
    return True


if not _defined():
    # define + impl on purpose (not torch.library.custom_op, whose calls import Dynamo)
    LIBRARY = torch.library.Library("transpile", "FRAGMENT")
    LIBRARY.define(SCHEMA)
    LIBRARY.impl("sdpa", sdpa, "CompositeExplicitAutograd")
    LIBRARY._register_fake("sdpa", sdpa_fake)
