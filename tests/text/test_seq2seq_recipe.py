"""The text-seq2seq recipe end to end: data, training, decoding, attention pictures, evaluation."""

import json
import shutil

import pytest

from conftest import run_cli
from muselab import api
from muselab.data.pairs import load_pairs

PAIRS = [("cat", "K AE T"), ("hat", "HH AE T"), ("bat", "B AE T"), ("sat", "S AE T"), ("mat", "M AE T"),
         ("cot", "K AA T"), ("hot", "HH AA T"), ("bot", "B AA T"), ("pot", "P AA T"), ("tot", "T AA T")]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.tsv"
    rows = [f"{s}{suffix}\t{t}{' Z' * len(suffix)}" for s, t in PAIRS for suffix in ("", "s", "ss", "sss")]
    path.write_text("\n".join(rows * 3) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def g2p_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "g2p"
    api.train("text-seq2seq", "builtin:cmudict", out, preset="tiny", quiet=True)
    return out


def test_cmudict_run_records_its_data(g2p_run):
    config = json.loads((g2p_run / "config.json").read_text())
    assert config["recipe"] == "text-seq2seq"
    assert config["data"]["stress"] == "stripped" and config["data"]["target_kind"] == "symbols"
    assert (g2p_run / "vocab.json").is_file()


def test_python_api_returns_phoneme_lists(g2p_run):
    g2p = api.load(g2p_run)
    out = g2p.generate(["hello", "world"])
    assert len(out.items) == 2 and all(isinstance(o, list) for o in out.items)
    assert all(set(o) <= set(g2p.assets["target_vocab"].symbols) for o in out.items)
    assert g2p.generate(["hello", "world"], beam=3).lines()[0].startswith("hello\t")


def test_beam_one_equals_greedy(g2p_run):
    run = api.load(g2p_run)
    words = ["hello", "world", "muselab", "phoneme", "a"]
    beam = run.generate(input=words, beam=1).items
    import torch

    from muselab.text.seq2seq_recipe import pad

    vocab = run.assets["source_vocab"]
    encoded = [vocab.encode(w) for w in words]
    greedy, _ = run.model.greedy(pad(encoded), torch.tensor([len(e) for e in encoded]), max_len=30)
    target = run.assets["target_vocab"]
    assert beam == [target.decode_symbols(tokens) for tokens in greedy]


def test_n_best_needs_a_wide_enough_beam(g2p_run):
    from muselab.core.errors import ControlError

    with pytest.raises(ControlError, match="--n-best"):
        api.load(g2p_run).generate(input=["hello"], n_best=3, beam=2)


def test_cli_generate_lines_attention_plot_and_file(g2p_run, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text("hello\nworld\n")
    picture = tmp_path / "att.png"
    result = run_cli("generate", str(g2p_run), "--input", "muse", "--input-file", str(words), "--beam", "3",
                     "--attention-plot", str(picture))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == ["muse", "hello", "world"]
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = tmp_path / "out.tsv"
    assert run_cli("generate", str(g2p_run), "--input", "muse", "--out", str(out)).returncode == 0
    assert out.read_text().startswith("muse\t") and json.loads((tmp_path / "out.tsv.json").read_text())["ai_generated"]


def test_evaluate_reports_wer_and_per_for_greedy_and_beam(g2p_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(g2p_run, copy)
    metrics = api.evaluate(copy)
    for key in ("wer", "per", "wer_greedy", "per_greedy", "wer_beam3", "per_beam3", "val_loss"):
        assert key in metrics
    assert 0 <= metrics["wer"] <= 1 and metrics["per"] >= 0
    assert json.loads((copy / "eval.json").read_text())["wer"] == metrics["wer"]


@pytest.mark.parametrize("attention", ["bahdanau", "luong_general"])
def test_user_pairs_train_and_learn(pairs_file, tmp_path, attention):
    out = tmp_path / attention
    api.train("text-seq2seq", str(pairs_file), out, preset="tiny", max_steps=150, quiet=True,
              overrides=[f"model.attention={attention}", "train.lr=0.01", "model.hidden=64", "model.emb_dim=32"])
    run = api.load(out)
    seen = dict(load_pairs(str(pairs_file)).train)
    words = sorted(seen)[:: max(1, len(seen) // 6)]
    outputs = run.generate(input=words).items
    assert [" ".join(o) for o in outputs] == [seen[w] for w in words]


def test_malformed_pairs_file_is_one_line_with_line_number(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("cat\tK AE T\ndog\n")
    result = run_cli("train", "text-seq2seq", "--data", str(bad), "--out", str(tmp_path / "run"), "--preset", "tiny")
    assert result.returncode == 2 and "line 2" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_bpe_sides_round_trip_and_train(tmp_path):
    from muselab.text.vocab import BPEVocab, build_vocab, load_vocabs, save_vocabs

    sentences = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn"] * 20
    vocab = build_vocab(sentences, "bpe", bpe_size=300)
    assert isinstance(vocab, BPEVocab) and vocab.decode(vocab.encode("the cat ran", add_eos=True)) == "the cat ran"
    save_vocabs(tmp_path, vocab, vocab)
    source, _ = load_vocabs(tmp_path)
    assert source == vocab and source.encode("park") == vocab.encode("park")

    data = tmp_path / "style.jsonl"
    varied = [f"{s} {n}" for s in sentences[:3] for n in range(100)]
    data.write_text("\n".join(json.dumps({"source": s, "target": s.upper()}) for s in varied) + "\n")
    out = tmp_path / "run"
    api.train("text-seq2seq", str(data), out, preset="tiny", max_steps=5, quiet=True,
              overrides=["data.source_kind=bpe", "data.target_kind=bpe", "data.bpe_size=300"])
    assert isinstance(api.load(out).generate(input=["the cat"]).items[0], str)


def test_min_length_beyond_the_longest_output_is_one_control_error(g2p_run):
    from muselab.core.errors import ControlError

    with pytest.raises(ControlError, match="--min-length 500 is longer than the longest output"):
        api.load(g2p_run).generate(["cat"], min_length=500)
