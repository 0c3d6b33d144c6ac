"""MODEL_CARD.md opens with YAML front matter in the Hugging Face model-card format."""

from __future__ import annotations

import helpers
from helpers import front_matter
from muselab.core.modelcard import front_matter as card_front_matter
from muselab.core.modelcard import public_data

SAVED = {"recipe": "image-vae", "config": {"train": {}},
         "data": {"spec": "/home/someone/private photos/cats", "source": "image folder '/home/someone/private photos'",
                  "fingerprint": "ab" * 32}}


def card(saved=SAVED, evaluation=None, tag="unconditional-image-generation", name="my run") -> str:
    return card_front_matter(name, saved, evaluation, tag) + "\n# body\n"


def test_front_matter_names_library_license_tags_data_and_pipeline():
    meta = front_matter(card())
    assert meta["library_name"] == "muselab" and meta["license"] == "other"
    assert meta["tags"] == ["image-vae", "image", "muselab"]
    assert meta["datasets"] == ["sha256:" + "ab" * 32]
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert "model-index" not in meta  # nothing evaluated yet


def test_front_matter_never_shows_a_private_path():
    assert "/home/someone" not in card() and "private photos" not in card()


def test_a_builtin_data_set_is_named():
    assert public_data({"spec": "builtin:digits", "fingerprint": "x"}) == "builtin:digits"


def test_metrics_of_an_evaluation_go_to_the_model_index_and_odd_names_stay_valid_yaml():
    evaluation = {"precision": 0.75, "fid": 12, "nan_metric": float("nan"), "flag": True, "data": "builtin:x",
                  "per_class": {"a": 1.0}}
    text = card({**SAVED, "data": {"spec": "builtin:shapes", "fingerprint": "f"}}, evaluation, None,
                name='run: "quoted" # not a comment\\ end')
    meta = front_matter(text)
    assert "pipeline_tag" not in meta
    (entry,) = meta["model-index"]
    assert entry["name"] == 'run: "quoted" # not a comment\\ end'
    (result,) = entry["results"]
    assert result["task"]["type"] == "image-vae" and result["dataset"]["name"] == "builtin:shapes"
    assert [(m["type"], m["value"]) for m in result["metrics"]] == [("precision", 0.75), ("fid", 12)]


def test_the_strict_reader_agrees_with_pyyaml_and_refuses_what_the_card_never_writes():
    evaluation = {"precision": 0.75, "recall": 1e-05, "big": 3e20, "count": 7}
    text = card(evaluation=evaluation)
    yaml_view = front_matter(text)
    lines = [line for line in text[4:text.index("\n---\n", 4)].split("\n") if line]
    assert helpers._strict_yaml(lines, 0)[0] == yaml_view
    metrics = yaml_view["model-index"][0]["results"][0]["metrics"]
    assert [m["value"] for m in metrics] == [0.75, 1e-05, 3e20, 7]  # numbers, not strings, for YAML 1.1 too
    for bad in (["key: plain words"], ["key:", "   - 1"], ["a: 1", "a: 2"]):
        try:
            helpers._strict_yaml(bad, 0)
        except AssertionError:
            continue
        raise AssertionError(f"accepted {bad}")
