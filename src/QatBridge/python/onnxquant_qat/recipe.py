"""The QAT recipe `onnxquant.qat-recipe/1`: which layers get which bits, their initial scales, and what stays float.

The compiler writes it (`onnxquant compile --emit-qat-recipe` or `onnxquant qat-recipe`); the trainer reads it.
Layer names are the model's weight names without the trailing `.weight` (PyTorch module paths, which are also the
initializer names of a plain `torch.onnx.export`). Layers absent from `layers` take the recipe's default bits.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from typing import Optional

from . import SCHEMA


class RecipeError(ValueError):
    """The recipe file is malformed; the message says which field and what is expected."""


@dataclass(frozen=True)
class ActivationRange:
    """Calibrated range of a layer's input activation (float); the quantizer's initial scale comes from it."""
    min: float
    max: float


@dataclass(frozen=True)
class LayerRecipe:
    name: str
    weight_bits: int
    act_bits: int
    # Per-output-channel symmetric weight scales from calibration; None lets the trainer initialize them.
    weight_scales: Optional[tuple] = None
    act_range: Optional[ActivationRange] = None
    # The post-training artifact's exact activation grid (revision 2): QuantizeLinear scale and unsigned zero point.
    act_scale: Optional[float] = None
    act_zero_point: Optional[int] = None


@dataclass(frozen=True)
class Recipe:
    weight_bits: int
    act_bits: int
    attention_bits: int
    layers: tuple = ()
    float_layers: tuple = ()
    source_model: str = ""
    source: str = "uniform"
    # 1: bits, weight scales, activation ranges. 2 adds act_scale/act_zero_point per layer and attention_bits 0
    # (attention q/k/v/softmax float), what `compile --emit-qat-recipe` writes so the student starts at the artifact.
    revision: int = 1
    # Revision 2: an .npz with the post-training weights and biases ("<layer>.weight", "<layer>.bias", PyTorch
    # layout) that the student starts from; relative to the recipe's folder in the file, resolved by Recipe.load.
    weights: str = ""

    @staticmethod
    def uniform(spec: str, float_layers=()) -> "Recipe":
        """A recipe from W-A-Attention such as "4-4-8", the same bits everywhere."""
        parts = spec.split("-")
        if len(parts) != 3 or not all(p.isdigit() for p in parts):
            raise RecipeError(f"bits '{spec}' must be W-A-Attention, e.g. 4-4-8")
        w, a, att = (int(p) for p in parts)
        recipe = Recipe(w, a, att, float_layers=tuple(float_layers), source="uniform")
        recipe.validate()
        return recipe

    @property
    def label(self) -> str:
        return f"{self.weight_bits}-{self.act_bits}-{self.attention_bits}"

    def layer(self, name: str) -> Optional[LayerRecipe]:
        """The entry for module `name`. An exact match wins; otherwise the one entry whose name ends with
        `.name`, because the compiler names layers by the exported module path, which carries the export wrapper's
        attribute (e.g. `model.decoder.0.ffn.linear1` for the module `decoder.0.ffn.linear1`)."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        suffixed = [layer for layer in self.layers if layer.name.endswith("." + name)]
        return suffixed[0] if len(suffixed) == 1 else None

    def matches(self, recipe_name: str, name: str) -> bool:
        """Whether a recipe name refers to module `name` (exactly, or through a wrapper prefix)."""
        return recipe_name == name or recipe_name.endswith("." + name)

    def is_float(self, name: str) -> bool:
        return any(self.matches(f, name) or name.startswith(f + ".") for f in self.float_layers)

    def validate(self) -> None:
        for what, bits in (("weight_bits", self.weight_bits), ("act_bits", self.act_bits)):
            _check_bits(bits, what)
        if self.attention_bits != 0:
            _check_bits(self.attention_bits, "attention_bits (0 keeps attention float)")
        seen = set()
        for layer in self.layers:
            if layer.name in seen:
                raise RecipeError(f"layer '{layer.name}' appears twice in layers")
            seen.add(layer.name)
            _check_bits(layer.weight_bits, f"layers['{layer.name}'].weight_bits")
            if layer.act_bits != 0:  # 0: the layer's input stays float (revision 2)
                _check_bits(layer.act_bits, f"layers['{layer.name}'].act_bits")
            if layer.weight_scales is not None:
                for s in layer.weight_scales:
                    if not (math.isfinite(s) and s > 0):
                        raise RecipeError(f"layers['{layer.name}'].weight_scales has {s}; scales must be finite and > 0")
            r = layer.act_range
            if r is not None and not (math.isfinite(r.min) and math.isfinite(r.max) and r.min <= r.max):
                raise RecipeError(f"layers['{layer.name}'].act_range [{r.min}, {r.max}] must be finite with min <= max")
            if (layer.act_scale is None) != (layer.act_zero_point is None):
                raise RecipeError(f"layers['{layer.name}']: act_scale and act_zero_point come together")
            if layer.act_scale is not None:
                if not (math.isfinite(layer.act_scale) and layer.act_scale > 0):
                    raise RecipeError(f"layers['{layer.name}'].act_scale is {layer.act_scale}; "
                                      "it must be finite and > 0")
                if not 0 <= layer.act_zero_point <= 2 ** layer.act_bits - 1:
                    raise RecipeError(f"layers['{layer.name}'].act_zero_point {layer.act_zero_point} is outside "
                                      f"0..{2 ** layer.act_bits - 1}")

    def to_json(self) -> dict:
        layers = []
        for layer in self.layers:
            entry = {"name": layer.name, "weight_bits": layer.weight_bits, "act_bits": layer.act_bits}
            if layer.weight_scales is not None:
                entry["weight_scales"] = list(layer.weight_scales)
            if layer.act_range is not None:
                entry["act_range"] = {"min": layer.act_range.min, "max": layer.act_range.max}
            if layer.act_scale is not None:
                entry["act_scale"] = layer.act_scale
                entry["act_zero_point"] = layer.act_zero_point
            layers.append(entry)
        doc = {
            "schema": SCHEMA,
            "source_model": self.source_model,
            "source": self.source,
            "defaults": {"weight_bits": self.weight_bits, "act_bits": self.act_bits,
                         "attention_bits": self.attention_bits},
            "layers": layers,
            "float_layers": list(self.float_layers),
        }
        if self.revision > 1:  # revision-1 files stay byte-identical
            head = {"schema": SCHEMA, "revision": self.revision}
            rest = {k: v for k, v in doc.items() if k != "schema"}
            if self.weights:
                rest = {**{k: rest[k] for k in ("source_model", "source")}, "weights": self.weights,
                        **{k: v for k, v in rest.items() if k not in ("source_model", "source")}}
            doc = {**head, **rest}
        return doc

    def save(self, path: str) -> None:
        text = json.dumps(self.to_json(), indent=2, sort_keys=False) + "\n"
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".recipe-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)

    @staticmethod
    def from_json(doc: dict, where: str = "recipe") -> "Recipe":
        if not isinstance(doc, dict):
            raise RecipeError(f"{where}: expected a JSON object")
        if doc.get("schema") != SCHEMA:
            raise RecipeError(f"{where}: schema is '{doc.get('schema')}', expected '{SCHEMA}'")
        defaults = _field(doc, "defaults", dict, where)
        layers = []
        for i, entry in enumerate(_field(doc, "layers", list, where)):
            at = f"{where}: layers[{i}]"
            if not isinstance(entry, dict):
                raise RecipeError(f"{at}: expected an object")
            scales = entry.get("weight_scales")
            rng = entry.get("act_range")
            layers.append(LayerRecipe(
                name=_field(entry, "name", str, at),
                weight_bits=_field(entry, "weight_bits", int, at),
                act_bits=_field(entry, "act_bits", int, at),
                weight_scales=None if scales is None else tuple(float(s) for s in scales),
                act_range=None if rng is None else ActivationRange(float(_field(rng, "min", (int, float), at)),
                                                                   float(_field(rng, "max", (int, float), at))),
                act_scale=float(_field(entry, "act_scale", (int, float), at)) if "act_scale" in entry else None,
                act_zero_point=_field(entry, "act_zero_point", int, at) if "act_zero_point" in entry else None,
            ))
        recipe = Recipe(
            weight_bits=_field(defaults, "weight_bits", int, where + ": defaults"),
            act_bits=_field(defaults, "act_bits", int, where + ": defaults"),
            attention_bits=_field(defaults, "attention_bits", int, where + ": defaults"),
            layers=tuple(layers),
            float_layers=tuple(str(x) for x in doc.get("float_layers", [])),
            source_model=str(doc.get("source_model", "")),
            source=str(doc.get("source", "")),
            revision=int(doc.get("revision", 1)),
            weights=str(doc.get("weights", "")),
        )
        try:
            recipe.validate()
        except RecipeError as e:
            raise RecipeError(f"{where}: {e}") from None
        return recipe

    @staticmethod
    def load(path: str) -> "Recipe":
        try:
            with open(path) as f:
                doc = json.load(f)
        except json.JSONDecodeError as e:
            raise RecipeError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
        recipe = Recipe.from_json(doc, path)
        if recipe.weights and not os.path.isabs(recipe.weights):
            from dataclasses import replace
            recipe = replace(recipe, weights=os.path.join(os.path.dirname(os.path.abspath(path)), recipe.weights))
        return recipe


def _check_bits(bits, what: str) -> None:
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise RecipeError(f"{what} is {bits}; bits must be an integer in 2..16")


def _field(doc: dict, key: str, kind, where: str):
    if key not in doc:
        raise RecipeError(f"{where}: missing field '{key}'")
    value = doc[key]
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise RecipeError(f"{where}: field '{key}' has {type(value).__name__}, expected {getattr(kind, '__name__', kind)}")
    return value
