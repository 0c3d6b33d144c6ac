"""text-seq2seq decoding bans: the policy's words and --ban reach character and BPE targets, not phonemes."""

import torch

from muselab.safety.guard import ban_words
from muselab.safety.moderation import load_policy
from muselab.text.seq2seq_recipe import TextSeq2SeqRecipe
from muselab.text.vocab import BOS, EOS, build_vocab

TARGETS = ["the zorbleflax sat", "a cat ran", "my hat"]


def test_a_banned_word_cannot_be_finished_on_character_targets():
    vocab = build_vocab(TARGETS, "char")
    # what the pipeline hands the recipe: the policy's block and redact words, then --ban
    words = ban_words(load_policy(None), ["zorbleflax"])
    (ban,) = TextSeq2SeqRecipe._bans(vocab, words)
    ids = torch.tensor([[BOS, *vocab.encode("the zorbleflax")]])
    scores = ban(ids, torch.zeros(1, vocab.size))
    # neither the end of the output nor a space may follow the complete word; other letters may
    assert torch.isneginf(scores[0, EOS]) and torch.isneginf(scores[0, vocab.encode(" ")[0]])
    assert not torch.isneginf(scores[0, vocab.encode("a")[0]])


def test_phoneme_targets_get_no_word_bans():
    vocab = build_vocab(["K AE T", "HH AE T"], "symbols")
    assert len(TextSeq2SeqRecipe._bans(vocab, ["zorbleflax"])) == 0
