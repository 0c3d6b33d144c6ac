import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from muselab.core.config import build_config, load_toml, parse_overrides
from muselab.core.errors import ConfigError
from muselab.text.lm_recipe import TextLMConfig, TextLMRecipe


def test_overrides_parse_numbers_bools_and_strings():
    assert parse_overrides(["model.n_layer=6", "train.precision=bf16", "train.tensorboard=true"]) == {
        "model": {"n_layer": 6}, "train": {"precision": "bf16", "tensorboard": True}}


def test_layers_apply_in_order():
    cfg = build_config(TextLMConfig, [TextLMRecipe.presets["tiny"], {"model": {"n_layer": 3}}])
    assert cfg.model.n_layer == 3
    assert cfg.model.n_embd == TextLMRecipe.presets["tiny"]["model"]["n_embd"]
    assert cfg.train.max_steps == TextLMRecipe.presets["tiny"]["train"]["max_steps"]


def test_defaults_are_the_default_preset():
    assert build_config(TextLMConfig, [TextLMRecipe.presets["default"]]) == TextLMConfig()


def test_setting_one_field_keeps_the_recipes_other_defaults():
    cfg = build_config(TextLMConfig, [{"model": {"n_layer": 2}, "train": {"max_steps": 5}}])
    defaults = TextLMConfig()
    assert cfg.model.dropout == defaults.model.dropout and cfg.train.lr == defaults.train.lr


def test_every_preset_is_valid():
    for preset in TextLMRecipe.presets.values():
        build_config(TextLMConfig, [preset])


def test_unknown_key_names_the_key_and_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        build_config(TextLMConfig, [parse_overrides(["model.n_layr=6"])])
    message = str(err.value)
    assert "model.n_layr" in message and "n_layer" in message and "\n" not in message


def test_unknown_section_is_refused():
    with pytest.raises(ConfigError, match="unknown config key 'modle'"):
        build_config(TextLMConfig, [{"modle": {"n_layer": 1}}])


@pytest.mark.parametrize("pair, fragment", [
    ("model.n_layer=abc", "model.n_layer"),
    ("model.n_layer=0", "greater than or equal to 1"),
    ("train.precision=fp8", "'fp32' or 'bf16'"),
    ("train.lr=-1", "train.lr"),
])
def test_bad_values_are_one_line_naming_the_key(pair, fragment):
    with pytest.raises(ConfigError) as err:
        build_config(TextLMConfig, [parse_overrides([pair])])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_set_without_equals_is_refused():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["model.n_layer"])


def test_toml_layer(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model]\nn_layer = 2\n[train]\nlr = 0.01\n")
    cfg = build_config(TextLMConfig, [load_toml(path)])
    assert (cfg.model.n_layer, cfg.train.lr) == (2, 0.01)


def test_broken_toml_is_a_config_error(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_toml(path)


@given(value=st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                       st.text(alphabet=st.characters(categories=["L"]), min_size=1)))
def test_override_values_round_trip(value):
    # bare words that are JSON literals (true, null, NaN...) are read as JSON, by design
    assume(not isinstance(value, str) or value not in {"true", "false", "null", "NaN", "Infinity"})
    parsed = parse_overrides([f"section.key={json.dumps(value) if not isinstance(value, str) else value}"])
    assert parsed == {"section": {"key": value}}
