"""Applies a QAT recipe to a PyTorch model: Linear, Conv2d and MultiheadAttention modules become quantized ones.

A scope limits which modules are converted, so the two-stage protocol can quantize the backbone first and the rest
later, from the first stage's checkpoint (converting an already converted model leaves its quantized modules alone).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, List

from torch import nn

from .lsq import LsqQuantizer
from .modules import (QuantConv2d, QuantLinear, QuantMultiheadAttention, QuantSplitAttention,
                      is_split_projection_attention)
from .recipe import Recipe

QUANT_TYPES = (QuantLinear, QuantConv2d, QuantMultiheadAttention, QuantSplitAttention)


@dataclass(frozen=True)
class ConvertedLayer:
    name: str
    kind: str
    weight_bits: int
    act_bits: int
    attention_bits: int = 0
    aligned: bool = False


@dataclass
class ConversionReport:
    converted: List[ConvertedLayer] = field(default_factory=list)
    kept_float: List[str] = field(default_factory=list)
    unmatched_recipe_layers: List[str] = field(default_factory=list)


def default_is_decoder_cross_attention(name: str) -> bool:
    """DETR's decoder co-attention: the decoder layers' attention over the encoder memory."""
    leaf = name.rsplit(".", 1)[-1]
    return "decoder" in name and leaf in ("multihead_attn", "cross_attn", "cross_attention")


def quantize_model(model: nn.Module, recipe: Recipe, scope: Callable[[str], bool] = lambda name: True,
                   align_query: bool = False,
                   is_cross_attention: Callable[[str], bool] = default_is_decoder_cross_attention) -> ConversionReport:
    """Replaces, in place, every Linear/Conv2d/MultiheadAttention whose name passes `scope` and is not a float layer
    of the recipe. With `align_query`, decoder cross-attention gets distribution alignment on its query."""
    report = ConversionReport()
    names = set()
    # Collect first: replacing while iterating named_modules would visit the new modules' children.
    targets = []
    for name, module in model.named_modules():
        names.add(name)
        if isinstance(module, QUANT_TYPES) or not _is_target(module):
            continue
        if _inside_converted(name, targets) or _inside_quant(model, name):
            continue
        targets.append((name, module))
    for name, module in targets:
        if not scope(name):
            continue
        if recipe.is_float(name):
            report.kept_float.append(name)
            continue
        layer = recipe.layer(name)
        w_bits = layer.weight_bits if layer else recipe.weight_bits
        a_bits = layer.act_bits if layer else recipe.act_bits
        if _is_attention(module):
            aligned = align_query and is_cross_attention(name)
            kind = QuantMultiheadAttention if isinstance(module, nn.MultiheadAttention) else QuantSplitAttention
            new = kind(module, w_bits, a_bits, recipe.attention_bits, align_query=aligned)
            report.converted.append(ConvertedLayer(name, "attention", w_bits, a_bits, recipe.attention_bits, aligned))
        elif isinstance(module, nn.Conv2d):
            new = QuantConv2d(module, w_bits, a_bits)
            report.converted.append(ConvertedLayer(name, "conv", w_bits, a_bits))
        else:
            new = QuantLinear(module, w_bits, a_bits)
            report.converted.append(ConvertedLayer(name, "linear", w_bits, a_bits))
        if isinstance(new, QuantSplitAttention):
            # The compiler sees the projections as separate layers; their own entries win over the attention's.
            for child in ("q_proj", "k_proj", "v_proj", "out_proj"):
                entry = recipe.layer(f"{name}.{child}") or layer
                if entry is not None:
                    if (entry.weight_bits, entry.act_bits) != (w_bits, a_bits):
                        setattr(new, child, QuantLinear(getattr(module, child), entry.weight_bits, entry.act_bits))
                    _init_from_recipe(getattr(new, child), getattr(new, child).aq, entry)
        elif layer is not None:
            aq = new.query_aq if isinstance(new, QuantMultiheadAttention) else new.aq
            _init_from_recipe(new, aq, layer)
        _set_module(model, name, new.to(next(module.parameters()).device))
    report.unmatched_recipe_layers = [l.name for l in recipe.layers
                                      if not any(recipe.matches(l.name, n) for n in names if n)]
    return report


def _init_from_recipe(module, aq, layer) -> None:
    try:
        if layer.weight_scales is not None:
            module.wq.init_from_scales(layer.weight_scales)
        if not isinstance(aq, LsqQuantizer):
            return
        if layer.act_scale is not None:
            aq.init_from_qparams(layer.act_scale, layer.act_zero_point)
        elif layer.act_range is not None:
            aq.init_from_range(layer.act_range.min, layer.act_range.max)
    except ValueError as e:
        raise ValueError(f"recipe layer '{layer.name}': {e}") from None


def load_recipe_weights(model: nn.Module, recipe: Recipe) -> List[str]:
    """Copies the post-training weights and biases of `recipe.weights` (an .npz written beside a compiler recipe)
    into the model's Linear and Conv2d modules, matched by recipe layer name; returns the module names. Call it on
    the BN-folded model: the compiler folds BN before it quantizes, so its weights are the folded ones."""
    import numpy as np
    import torch
    if not recipe.weights:
        return []
    try:
        arrays = np.load(recipe.weights)
    except OSError as e:
        raise ValueError(f"recipe weights {recipe.weights}: {e}") from None
    modules = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    loaded = []
    for key in sorted(arrays.files):
        layer, _, kind = key.rpartition(".")
        names = [n for n in modules if recipe.matches(layer, n)]
        if len(names) != 1:
            raise ValueError(f"recipe weights {recipe.weights}: '{layer}' matches {len(names)} modules, expected one")
        module = modules[names[0]]
        value = torch.from_numpy(arrays[key].astype(np.float32))
        target = module.weight if kind == "weight" else module.bias
        if target is None:
            module.bias = nn.Parameter(value)
            continue
        if target.shape != value.shape:
            raise ValueError(f"recipe weights {recipe.weights}: '{key}' has shape {tuple(value.shape)}, module "
                             f"'{names[0]}' {tuple(target.shape)}")
        with torch.no_grad():
            target.copy_(value)
        if kind == "weight":
            loaded.append(names[0])
    return loaded


def fold_batchnorm(model: nn.Module) -> List[str]:
    """Folds every BatchNorm2d into the Conv2d registered just before it in the same parent (a conv -> BN pair of a
    ResNet block or an nn.Sequential) and replaces the BN by an identity; returns the folded convs' names.

    With frozen statistics a BN is an affine map of its conv's output, so folding changes nothing in eval mode, and
    the quantizer then sees the weight a deployed model holds: the compiler folds BN before it quantizes, so a
    student that starts from the compiler's weight scales must quantize the folded weight too."""
    import torch
    folded = []
    for parent_name, parent in list(model.named_modules()):
        children = list(parent.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and conv.out_channels == bn.num_features and bn.track_running_stats):
                continue
            with torch.no_grad():
                factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
                conv.weight.mul_(factor.reshape(-1, 1, 1, 1))
                bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
                new_bias = (bias - bn.running_mean) * factor + bn.bias
            conv.bias = nn.Parameter(new_bias)
            setattr(parent, bn_name, nn.Identity())
            folded.append(f"{parent_name}.{conv_name}" if parent_name else conv_name)
    return folded


def quantized_modules(model: nn.Module):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, QUANT_TYPES)]


def _is_attention(module: nn.Module) -> bool:
    return isinstance(module, nn.MultiheadAttention) or is_split_projection_attention(module)


def _is_target(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d)) or _is_attention(module)


def _inside_converted(name: str, targets) -> bool:
    # The projections of an attention module are converted with it, at the attention's bits.
    return any(name.startswith(t + ".") for t, m in targets if _is_attention(m))


def _inside_quant(model: nn.Module, name: str) -> bool:
    parts = name.split(".")
    module = model
    for part in parts[:-1]:
        module = getattr(module, part)
        if isinstance(module, QUANT_TYPES):
            return True
    return False


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, new)
