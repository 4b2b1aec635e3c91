import json

import pytest

from onnxquant_qat.recipe import ActivationRange, LayerRecipe, Recipe, RecipeError


def test_uniform_spec_parses_w_a_attention():
    r = Recipe.uniform("4-4-8", float_layers=["backbone.stem.0"])
    assert (r.weight_bits, r.act_bits, r.attention_bits) == (4, 4, 8)
    assert r.is_float("backbone.stem.0") and not r.is_float("backbone.stem.01")
    assert r.label == "4-4-8"


@pytest.mark.parametrize("spec", ["4-4", "4-x-8", "1-4-8", "4-4-17"])
def test_bad_uniform_spec_is_refused(spec):
    with pytest.raises(RecipeError):
        Recipe.uniform(spec)


def test_round_trip_through_json(tmp_path):
    r = Recipe(4, 4, 8, layers=(LayerRecipe("input_proj", 2, 8, (0.5, 0.25), ActivationRange(-1.0, 3.0)),),
               float_layers=("class_heads",), source_model="m.onnx", source="allocation")
    path = tmp_path / "r.json"
    r.save(str(path))
    assert Recipe.load(str(path)) == r
    assert json.loads(path.read_text())["schema"] == "onnxquant.qat-recipe/1"


def test_errors_name_the_field(tmp_path):
    doc = Recipe.uniform("4-4-8").to_json()
    doc["layers"] = [{"name": "a", "weight_bits": 4, "act_bits": 40}]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(RecipeError, match=r"layers\['a'\].act_bits"):
        Recipe.load(str(path))
    doc["schema"] = "other/1"
    path.write_text(json.dumps(doc))
    with pytest.raises(RecipeError, match="schema"):
        Recipe.load(str(path))


def test_compiler_layer_names_match_through_an_export_wrapper():
    # The compiler names layers by exported module path, which includes the export wrapper's attribute.
    recipe = Recipe.from_json({
        "schema": "onnxquant.qat-recipe/1", "source": "allocation", "source_model": "m.onnx",
        "defaults": {"weight_bits": 4, "act_bits": 8, "attention_bits": 8},
        "layers": [{"name": "model.decoder.0.ffn.linear1", "weight_bits": 3, "act_bits": 8},
                   {"name": "model.head", "weight_bits": 8, "act_bits": 8},
                   {"name": "other.head", "weight_bits": 6, "act_bits": 8}],
        "float_layers": ["model.backbone.stem"],
    })
    assert recipe.layer("decoder.0.ffn.linear1").weight_bits == 3
    assert recipe.layer("model.head").weight_bits == 8
    # Two entries end with ".head": ambiguous, so the defaults apply rather than a guess.
    assert recipe.layer("head") is None
    assert recipe.is_float("backbone.stem")
    assert not recipe.is_float("backbone.stages")


def test_revision_two_weights_are_found_beside_the_recipe_and_loaded(tmp_path):
    import numpy as np
    import torch
    from onnxquant_qat.convert import load_recipe_weights
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Conv2d(2, 4, 1, bias=False))
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.savez(tmp_path / "r.weights.npz", **{"model.0.weight": w, "model.0.bias": np.array([1, 2], np.float32),
                                            "model.1.weight": np.ones((4, 2, 1, 1), np.float32),
                                            "model.1.bias": np.full(4, 0.5, np.float32)})
    recipe = Recipe(4, 8, 0, layers=(LayerRecipe("model.0", 4, 8, act_scale=0.1, act_zero_point=3),
                                     LayerRecipe("model.1", 2, 0)), revision=2, weights="r.weights.npz")
    recipe.save(str(tmp_path / "r.json"))
    doc = json.loads((tmp_path / "r.json").read_text())
    assert list(doc)[:5] == ["schema", "revision", "source_model", "source", "weights"]
    back = Recipe.load(str(tmp_path / "r.json"))
    assert back.weights == str(tmp_path / "r.weights.npz") and back.layer("model.0").act_zero_point == 3
    assert back.attention_bits == 0 and back.layer("model.1").act_bits == 0
    assert load_recipe_weights(model, back) == ["0", "1"]
    assert torch.equal(model[0].weight, torch.from_numpy(w)) and model[0].bias.tolist() == [1.0, 2.0]
    assert model[1].bias.tolist() == [0.5] * 4  # a bias the compiler added (bias correction) is taken too
    np.savez(tmp_path / "r.weights.npz", **{"model.0.weight": w.T})
    with pytest.raises(ValueError, match="shape"):
        load_recipe_weights(model, back)
