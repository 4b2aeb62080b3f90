"""Function-preserving growth of a trained PET's state dict into a larger configuration.

A run resumed with more capacity (``symbreak train --resume --model-config``) starts from
the same energies and forces it stopped at, so every step spent goes into the new
capacity instead of first relearning the old one. Each function pads ``entries`` (the
checkpoint's state dict) in place to the shapes of ``own`` (the freshly built model's,
whose random initialisation supplies the new input weights) and returns True if anything
grew (the optimiser's moments then no longer fit: a fresh optimiser is needed).

What grows, and why the function is unchanged:
- spline edge readouts (a longer transformer cutoff): the new basis functions lie beyond
  the old cutoff and start at zero;
- ``d_ff``: new hidden units of each feed-forward net get random input weights and zero
  output weights, so they add nothing until trained;
- ``n_transformer_layers``: new pre-norm blocks are appended with zero output projections
  (attention ``out`` and ``ff.fc2``), so each is the identity ``x + 0 + 0``;
- ``n_mp_layers``: new message-passing layers are appended; their energy heads start at
  zero (as in any fresh layer) and no earlier layer reads them.

Shrinking is refused by name: it cannot preserve the function.
"""

from __future__ import annotations

import re

import torch

_BLOCK = re.compile(r"^(layers\.\d+\.blocks\.\d+)\.")
_LAYER = re.compile(r"^(layers\.\d+)\.")
# In a new block, the projections whose zeros make it the identity.
_BLOCK_OUTPUTS = (".out.weight", ".out.bias", ".ff.fc2.weight", ".ff.fc2.bias")


def grow_edge_readouts(entries: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> bool:
    """Pad the spline edge readouts of a checkpoint trained at a shorter transformer cutoff
    (fewer spline basis functions: the knots start at the same ``pair_r_min``, so the old
    ones keep their meaning) to this model's; the new basis functions start at zero."""
    grown = False
    for name, value in list(entries.items()):
        if ".head_edge.fc2." not in name or name not in own:
            continue
        target = own[name]
        if value.shape == target.shape or value.shape[1:] != target.shape[1:]:
            continue
        if value.shape[0] > target.shape[0]:
            raise ValueError(
                f"{name}: the checkpoint's transformer reads a longer cutoff "
                f"({value.shape[0]} spline functions, this model {target.shape[0]})"
            )
        entries[name] = _padded(value, target, axis=0, zeros=True)
        grown = True
    return grown


def grow_feed_forward(entries: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> bool:
    """Widen the transformer blocks' feed-forward nets to this model's ``d_ff``: new hidden
    units take ``own``'s input weights and biases and zero output weights."""
    grown = False
    for name, value in list(entries.items()):
        if ".blocks." not in name or ".ff." not in name or name not in own:
            continue
        target = own[name]
        if value.shape == target.shape:
            continue
        hidden_axis = 1 if ".ff.fc2.weight" in name else 0
        old, new = value.shape[hidden_axis], target.shape[hidden_axis]
        if old > new:
            raise ValueError(
                f"{name}: the checkpoint's feed-forward nets are wider (d_ff {old}) than "
                f"this model's ({new}); a narrower model cannot keep what was learned"
            )
        # output weights (fc2) get zeros, input weights and biases (fc1) own's
        entries[name] = _padded(value, target, axis=hidden_axis, zeros=hidden_axis == 1)
        grown = True
    return grown


def grow_depth(entries: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> bool:
    """Add this model's transformer blocks and message-passing layers that the checkpoint
    lacks: new blocks as identities (zero output projections), new layers as they were
    built (their energy heads start at zero)."""
    old_blocks, old_layers = _prefixes(_BLOCK, entries), _prefixes(_LAYER, entries)
    new_blocks, new_layers = _prefixes(_BLOCK, own), _prefixes(_LAYER, own)
    for kind, extra in (
        ("message-passing layers (n_mp_layers)", old_layers - new_layers),
        ("transformer blocks (n_transformer_layers)", old_blocks - new_blocks),
    ):
        if extra:
            raise ValueError(
                f"the checkpoint has more {kind} than this model ({', '.join(sorted(extra))} "
                "are not in it); a shallower model cannot keep what was learned"
            )
    grown = False
    for name, value in own.items():
        if name in entries:
            continue
        block, layer = _BLOCK.match(name), _LAYER.match(name)
        if block and block.group(1) not in old_blocks and layer.group(1) in old_layers:
            entries[name] = torch.zeros_like(value) if name.endswith(_BLOCK_OUTPUTS) else value
            grown = True
        elif layer and layer.group(1) not in old_layers:
            entries[name] = value
            grown = True
    return grown


def _padded(value: torch.Tensor, target: torch.Tensor, axis: int, zeros: bool) -> torch.Tensor:
    """``value`` padded along ``axis`` to ``target``'s shape, the new part zeros or
    ``target``'s own entries."""
    padded = torch.zeros_like(target) if zeros else target.clone()
    padded.narrow(axis, 0, value.shape[axis]).copy_(value)
    return padded


def _prefixes(pattern: re.Pattern, names) -> set[str]:
    """The layer or block prefixes (``pattern``'s group 1) that ``names`` hold."""
    return {m.group(1) for m in map(pattern.match, names) if m}


def grow_state(entries: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> bool:
    """All of the above; True if anything grew."""
    grown = grow_edge_readouts(entries, own)
    grown |= grow_feed_forward(entries, own)
    return grow_depth(entries, own) | grown
