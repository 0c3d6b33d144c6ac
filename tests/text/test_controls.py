"""Text-generation controls: defaults, ranges and the one-line messages a user sees for bad values."""

import pytest
from pydantic import BaseModel, ConfigDict, Field

from muselab.core.errors import ControlError
from muselab.text.controls import TextGenerationControls, option_name, parse_controls


def _error(values: object, cls: type[BaseModel] = TextGenerationControls) -> str:
    with pytest.raises(ControlError) as info:
        parse_controls(cls, values)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_leave_every_filter_off():
    controls = parse_controls(TextGenerationControls, {})
    assert controls == TextGenerationControls()
    assert (controls.max_new_tokens, controls.temperature) == (200, 0.8)
    assert (controls.top_k, controls.top_p, controls.min_p) == (0, 1.0, 0.0)
    assert (controls.repetition_penalty, controls.no_repeat_ngram_size) == (1.0, 0)
    assert controls.stop == [] and controls.num_samples == 1 and controls.seed is None and controls.stream


def test_every_control_has_help_text():
    # The description is the CLI help and the web form label: none may be missing.
    for name, info in TextGenerationControls.model_fields.items():
        assert info.description and len(info.description) < 120, name


def test_valid_values_are_accepted_and_strings_from_the_cli_are_converted():
    controls = parse_controls(
        TextGenerationControls,
        {"temperature": "0", "top_p": "0.9", "top_k": "40", "stop": ["\n\n"], "seed": 7, "stream": "false"},
    )
    assert controls.temperature == 0.0 and controls.top_p == 0.9 and controls.top_k == 40
    assert controls.stop == ["\n\n"] and controls.seed == 7 and controls.stream is False


def test_negative_temperature_names_the_option_and_range():
    assert _error({"temperature": -0.5}) == "bad value for --temperature: -0.5; must be >= 0"


@pytest.mark.parametrize("value", [0, 1.5])
def test_top_p_outside_range(value):
    assert _error({"top_p": value}) == f"bad value for --top-p: {value}; must be > 0 and <= 1"


def test_unknown_control_lists_the_allowed_ones_and_suggests_the_closest():
    message = _error({"top_q": 0.5})
    assert message.startswith("unknown control --top-q (did you mean --top-p?); allowed: --prompt,")
    for name in TextGenerationControls.model_fields:
        assert option_name(name) in message


def test_wrong_type_states_the_type_and_the_range():
    assert _error({"max_new_tokens": "many"}) == (
        "bad value for --max-new-tokens: 'many'; must be an integer >= 1 and <= 100000"
    )
    assert (
        _error({"temperature": float("nan")})
        == "bad value for --temperature: nan; must be a finite number >= 0"
    )
    assert _error({"stream": "maybe"}) == "bad value for --stream: 'maybe'; must be true or false"


def test_list_control_reports_the_whole_value():
    assert _error({"stop": ["ok", 3]}) == "bad value for --stop: ['ok', 3]; must be a list of strings"
    assert _error({"stop": [""]}) == "bad value for --stop: ['']; stop strings must not be empty"


def test_long_values_are_shortened_and_newlines_escaped():
    message = _error({"stop": "line one\nline two" * 20})
    assert message.startswith("bad value for --stop: 'line one\\nline two")
    assert len(message) < 140


def test_other_ranges():
    assert _error({"min_p": 1}) == "bad value for --min-p: 1; must be >= 0 and < 1"
    assert _error({"repetition_penalty": 0}) == "bad value for --repetition-penalty: 0; must be > 0"
    assert _error({"num_samples": 257}) == "bad value for --num-samples: 257; must be >= 1 and <= 256"
    assert _error({"seed": -1}).startswith("bad value for --seed: -1; must be >= 0 and <= ")
    assert _error({"top_k": -1}) == "bad value for --top-k: -1; must be >= 0"


def test_not_a_mapping():
    assert _error(["temperature"]).startswith("bad controls: ")


def test_helper_works_for_any_controls_model():
    class ImageControls(BaseModel):
        model_config = ConfigDict(extra="forbid")
        guidance_scale: float = Field(7.5, ge=1, le=30, description="How closely to follow the prompt.")
        steps: int = Field(..., ge=1, description="Denoising steps.")

    assert parse_controls(ImageControls, {"steps": 4}).steps == 4
    assert _error({"steps": 4, "guidance_scale": 0.5}, ImageControls) == (
        "bad value for --guidance-scale: 0.5; must be >= 1 and <= 30"
    )
    assert _error({}, ImageControls) == "missing control --steps; it is required"
    assert _error({"steps": 1, "seed": 3}, ImageControls) == (
        "unknown control --seed; allowed: --guidance-scale, --steps"
    )
