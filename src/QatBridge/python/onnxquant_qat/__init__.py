"""Quantization-aware training for DETR with Q-DETR's distillation, driven by an OnnxQuant QAT recipe.

Modules: recipe (the `onnxquant.qat-recipe/1` schema), lsq (learnable-scale fake quantizers), modules (quantized
Linear/Conv/attention and distribution alignment), convert (applies a recipe to a model), fqm (foreground-aware query
matching distillation), train (the two-stage trainer), export (QDQ ONNX export). The DETR model, its set criterion,
the box maths and the synthetic data come from onnxquant_models (models/ in this repository).
"""

SCHEMA = "onnxquant.qat-recipe/1"
