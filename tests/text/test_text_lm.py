"""The text-lm recipe end to end through the Python API."""

import json
import shutil

import pytest
import torch

from helpers import front_matter
from muselab import api
from muselab.core.checkpoint import load_tensors
from muselab.core.errors import CheckpointError, ConfigError, ControlError
from muselab.text.controls import TextGenerationControls
from muselab.text.decoding import generate_tokens


@pytest.fixture(scope="module")
def run(tiny_run):
    return api.load(tiny_run)


def test_greedy_is_identical_with_and_without_the_kv_cache(run):
    model, block = run.model, run.model.cfg.block_size
    prompt = torch.tensor([run.assets["tokenizer"].encode("The quick brown")] * 2)
    controls = TextGenerationControls(max_new_tokens=2 * block, temperature=0)
    cached = generate_tokens(model.cached_step(2), prompt, controls)
    uncached = generate_tokens(model.uncached_step(), prompt, controls)
    assert cached == uncached and len(cached[0]) == 2 * block


def _deep_model(n_layer: int = 3, block: int = 16):
    from muselab.text.lm import GPT, GPTConfig

    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=20, n_layer=n_layer, n_head=2, n_embd=32, block_size=block, dropout=0.0)).eval()


def _cached_and_uncached_logits(n_layer: int, block: int = 16, steps: int = 48) -> list[float]:
    """Largest logit difference per step between the KV-cache and the recomputing step functions fed the
    same tokens, on a random model with more than one layer: a one-layer model cannot show a stale cache,
    its cached keys and values depend on their own token only."""
    model = _deep_model(n_layer, block)
    ids = torch.randint(0, 20, (1, steps))
    cached, uncached = model.cached_step(1), model.uncached_step()
    with torch.no_grad():
        return [float((cached(ids[:, i:i + 1]) - uncached(ids[:, i:i + 1])).abs().max()) for i in range(steps)]


def test_cache_and_recomputing_agree_within_the_window():
    assert max(_cached_and_uncached_logits(n_layer=3)[:16]) < 1e-5


def test_deep_cache_agrees_with_recomputing_past_the_window():
    assert max(_cached_and_uncached_logits(n_layer=3)[16:]) < 1e-5


def test_prompt_longer_than_the_window_is_cropped_both_ways():
    model = _deep_model()
    prompt = torch.randint(0, 20, (2, 40))
    controls = TextGenerationControls(max_new_tokens=20, temperature=0)
    with torch.no_grad():
        assert generate_tokens(model.cached_step(2), prompt, controls) == generate_tokens(
            model.uncached_step(), prompt, controls)


def test_deep_greedy_is_identical_past_the_window():
    model = _deep_model()
    prompt = torch.randint(0, 20, (3, 5))
    controls = TextGenerationControls(max_new_tokens=40, temperature=0)
    with torch.no_grad():
        assert generate_tokens(model.cached_step(3), prompt, controls) == generate_tokens(
            model.uncached_step(), prompt, controls)


def test_a_full_cache_refuses_more_tokens_instead_of_sliding():
    from muselab.text.lm import KVCache

    model = _deep_model()
    cache = KVCache(model.cfg, 1, torch.device("cpu"), torch.float32)
    with torch.no_grad():
        model(torch.zeros(1, 16, dtype=torch.long), cache=cache)
        with pytest.raises(ValueError, match="after 16 cached exceed block_size 16"):
            model(torch.zeros(1, 1, dtype=torch.long), cache=cache)


def test_cache_slides_past_the_context_window(run):
    block = run.model.cfg.block_size
    out = run.generate(prompt="The", max_new_tokens=3 * block, temperature=0.8, seed=1, stream=False)
    assert len(out.items[0]) > block


def test_same_seed_same_text_and_other_seeds_differ(run):
    first = run.generate("The", max_new_tokens=60, seed=7, stream=False).items
    again = run.generate(prompt="The", max_new_tokens=60, seed=7, stream=False).items
    other = run.generate(prompt="The", max_new_tokens=60, seed=8, stream=False).items
    assert first == again and first != other


def test_samples_continue_the_prompt_and_batch(run):
    out = run.generate(prompt="Old stone", max_new_tokens=20, num_samples=5, seed=0, stream=False)
    assert len(out.items) == 5 and all(t.startswith("Old stone") for t in out.items)


def test_stop_strings_cut_the_text(run):
    out = run.generate(prompt="The", max_new_tokens=200, stop=["."], num_samples=4, seed=3, stream=False)
    for text in out.items:
        assert "." not in text


def test_streaming_shows_exactly_the_final_text_prompt_first(run):
    pieces = []
    out = run.generate(on_text=pieces.append, prompt="A", max_new_tokens=40, seed=5)
    assert pieces[0].startswith("A") and "".join(pieces) == out.items[0]


def test_unknown_prompt_characters_are_a_control_error(run):
    with pytest.raises(ControlError, match="never saw"):
        run.generate(prompt="Zürich", max_new_tokens=5)


def test_evaluate_writes_the_metrics(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy)
    metrics = api.evaluate(copy)
    saved = json.loads((copy / "eval.json").read_text())
    for key in ("val_loss", "perplexity", "bits_per_char", "distinct_1", "distinct_2", "distinct_3",
                "self_bleu", "novelty", "longest_copy_chars", "memorization_flagged_share"):
        assert key in saved and saved[key] == metrics[key]
    assert metrics["perplexity"] == pytest.approx(torch.tensor(metrics["val_loss"]).exp().item())
    assert (copy / "samples" / "eval_samples.jsonl").is_file()
    card = (copy / "MODEL_CARD.md").read_text()
    assert "Evaluation" in card
    meta = front_matter(card)  # the Hugging Face front matter carries the metrics eval.json holds
    assert meta["pipeline_tag"] == "text-generation" and meta["tags"] == ["text-lm", "text", "muselab"]
    data = json.loads((copy / "config.json").read_text())["data"]
    assert data["spec"] not in card.split("\n---\n")[0] and meta["datasets"] == [f"sha256:{data['fingerprint']}"]
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["val_loss"] == pytest.approx(saved["val_loss"]) and metrics["novelty"] == saved["novelty"]


def test_run_directory_has_the_documented_files(tiny_run):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "trainer_state.safetensors",
                 "trainer_state.json", "metrics.jsonl", "MODEL_CARD.md", "loss.png", "copy_index.safetensors"):
        assert (tiny_run / name).is_file(), name
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["recipe"] == "text-lm" and len(config["data"]["fingerprint"]) == 64


def test_init_from_and_freeze(tiny_run, tmp_path, corpus_file):
    out = tmp_path / "finetuned"
    api.train("text-lm", str(corpus_file), out, preset="tiny", init_from=tiny_run, freeze=["blocks.0.*"],
              max_steps=5, quiet=True)
    source, tuned = load_tensors(tiny_run / "model.safetensors"), load_tensors(out / "model.safetensors")
    frozen = [k for k in source if k.startswith("blocks.0.")]
    assert frozen and all(torch.equal(source[k], tuned[k]) for k in frozen)
    assert not torch.equal(source["wte.weight"], tuned["wte.weight"])
    assert (out / "tokenizer.json").read_text() == (tiny_run / "tokenizer.json").read_text()


def test_init_from_reports_mismatched_shapes_by_name(tiny_run, tmp_path, corpus_file):
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*wte.weight"):
        api.train("text-lm", str(corpus_file), tmp_path / "x", preset="tiny", init_from=tiny_run,
                  overrides=["model.n_embd=16"], quiet=True)
    assert not (tmp_path / "x").exists()


def test_freeze_pattern_that_matches_nothing(tmp_path, corpus_file):
    with pytest.raises(ConfigError, match="matches no parameter"):
        api.train("text-lm", str(corpus_file), tmp_path / "x", preset="tiny", freeze=["encoder.*"], quiet=True)


def test_bpe_tokenizer_and_jsonl_data(tmp_path, corpus_file):
    data = tmp_path / "data.jsonl"
    lines = corpus_file.read_text().splitlines()
    data.write_text("\n".join(json.dumps({"text": line}) for line in lines) + "\n")
    out = tmp_path / "bpe"
    api.train("text-lm", str(data), out, preset="tiny", overrides=["tokenizer.kind=bpe",
              "tokenizer.vocab_size=300"], max_steps=5, quiet=True)
    run = api.load(out)
    assert run.assets["tokenizer"].kind == "bpe"
    assert run.generate(prompt="The", max_new_tokens=10, seed=0, stream=False).items[0].startswith("The")


def test_bf16_autocast_on_cpu_trains_close_to_fp32():
    # attention runs in fp32 under CPU bf16 autocast (faster there); the rest in bf16
    model = _deep_model().train()
    x = torch.randint(0, 20, (4, 16))
    fp32 = model.training_step((x, x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model.training_step((x, x))
    bf16.backward()
    assert abs(bf16.item() - fp32.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_rotary_in_real_form_for_exporters_equals_the_complex_form() -> None:
    from muselab.transformer import apply_rotary, rotary_tables

    x = torch.randn(2, 5, 3, 16)
    positions = torch.arange(5)
    complex_form = rotary_tables(positions, 16, 10000.0)[None, :, None, :]
    real_form = rotary_tables(positions, 16, 10000.0, real=True)[None, :, None, :]
    assert torch.allclose(apply_rotary(x, complex_form), apply_rotary(x, real_form), atol=1e-6)
    assert not torch.allclose(apply_rotary(x, real_form), x)  # position 0 is unrotated, the rest move
