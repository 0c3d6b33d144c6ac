"""Every preset of every recipe builds its model: a `base` or `large` preset that only a GPU user tries
must not first fail there. Data is prepared once per recipe (tiny preset, its built-in data) and each
preset's model is built from it and counted."""

import time

import pytest
import torch

from muselab.core.config import build_config
from muselab.core.registry import iter_recipes

RECIPES = list(iter_recipes())


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[r.name for r in RECIPES])
def test_every_preset_builds_its_model(recipe):
    assert "base" in recipe.presets, f"{recipe.name} has no base preset"
    tiny = build_config(recipe.config_class, [recipe.presets.get("tiny", {})])
    prepared = recipe.prepare_data(tiny, recipe.default_data)
    sizes = {}
    for preset, layer in recipe.presets.items():
        cfg = build_config(recipe.config_class, [layer])
        start = time.perf_counter()
        model = recipe.build_model(cfg, prepared.assets)
        assert isinstance(model, torch.nn.Module)
        sizes[preset] = sum(p.numel() for p in model.parameters())
        assert sizes[preset] > 0, preset
        assert all(torch.isfinite(p).all() for p in model.parameters()), preset
        assert time.perf_counter() - start < 60, preset
    # the base preset is the GPU size: larger than the CPU default
    assert sizes["base"] > sizes["default"], sizes
