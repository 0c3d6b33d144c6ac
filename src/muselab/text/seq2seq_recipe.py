"""The `text-seq2seq` recipe: an RNN encoder-decoder with attention on paired data (G2P, translation...)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from muselab.core.config import Section, TrainConfig
from muselab.core.controls import aliases
from muselab.core.errors import ConfigError, ControlError, DataError
from muselab.core.registry import (
    Capabilities,
    Evaluation,
    GenerationContext,
    PreparedData,
    Recipe,
    Sizing,
    size_row,
)
from muselab.core.results import SequenceResult
from muselab.core.rundir import RunDir
from muselab.core.trainer import mean_loss
from muselab.data.pairs import BUILTIN_PAIR_SOURCES, load_pairs
from muselab.text.bans import build_ban_processor
from muselab.text.controls import TextGenerationControls
from muselab.text.decoding import (
    Hypothesis,
    LogitsProcessorList,
    beam_search,
    build_processors,
    generate_tokens,
)
from muselab.text.metrics import corpus_bleu_chrf, phoneme_error_rate, word_error_rate
from muselab.text.seq2seq import Seq2Seq, Seq2SeqConfig
from muselab.text.vocab import BOS, EOS, PAD, UNK, Vocab, build_vocab, load_vocabs, save_vocabs


class PairDataConfig(Section):
    source_kind: Literal["char", "symbols", "bpe"] = Field(
        "char", description="sources as characters, space-separated symbols, or byte-level BPE")
    target_kind: Literal["auto", "char", "symbols", "bpe"] = Field(
        "auto", description="auto: symbols when targets look like phonemes, else characters")
    bpe_size: int = Field(4000, ge=260, description="vocabulary size of a BPE side")
    keep_stress: bool = Field(False, description="builtin:cmudict: keep the stress digits on vowels")
    max_length: int = Field(64, ge=4, description="longest source or target in symbols; longer pairs are dropped")


class Seq2SeqEvalConfig(Section):
    beam: int = Field(5, ge=1, le=64, description="beam size for the test-set metrics (greedy is reported too)")
    split: Literal["test", "val"] = Field(
        "test", description="where the error rates are measured: choose settings on val, report test once")
    batch_size: int = Field(256, ge=1, description="inputs decoded together")


class Seq2SeqRecipeConfig(Section):
    data: PairDataConfig = PairDataConfig()
    # Little dropout: in 30 CPU minutes the model underfits (dropout 0.2 gave WER 33.1 %, 0.05 gave 31.2 %);
    # label smoothing 0.1 with batches of 256 then gave 29.8-30.2 % over four runs. Coverage (past attention
    # in the scores: G2P alignments are monotonic) costs little per step and tells the model which letters it
    # has read: 29.4-29.9 % over four runs, in fewer steps (3,736-4,268 against 4,275-4,948 on a host that
    # was slower those days). No better at this budget: dropout 0 (30.0 %), an EMA of the weights
    # (+0.01 points), Luong-general attention (35.3 %, unstable at this learning rate), beam length
    # penalties (at most 0.08 points).
    model: Seq2SeqConfig = Seq2SeqConfig(dropout=0.05, label_smoothing=0.1, coverage=True)
    # 27-36 minutes on 2 CPU cores (2.1-2.8 steps/s: the shared host's speed varies; under --max-minutes
    # the schedule fits the clock): ~8-10 passes over CMUdict's 112k training words. Batches of 256 run 1.5x more words per
    # second than 128 here (the decoder's per-step cost is mostly fixed).
    train: TrainConfig = TrainConfig(max_steps=4600, batch_size=256, lr=4e-3, warmup_steps=300, min_lr_ratio=0.02,
                                     weight_decay=0.0, grad_clip=1.0, eval_every=1000, eval_batches=0,
                                     checkpoint_every=1000, beta2=0.99)
    eval: Seq2SeqEvalConfig = Seq2SeqEvalConfig()


# The default preset's sizing rule (README: "Defaults that fit the data"). Rows, smallest first:
# (name, emb_dim, hidden, enc_layers, dec_layers, batch_size, lr). The data picks a row by training pairs, the
# budget caps it; dropout follows the data's row, and is small when the budget capped the model. Row "m"
# with no budget is the CMUdict-tuned preset above (112k training pairs).
SEQ2SEQ_SIZES = [
    ("xs", 64, 128, 1, 1, 32, 3e-3),
    ("s", 96, 192, 2, 1, 64, 3e-3),
    ("m", 128, 256, 2, 1, 256, 4e-3),
    ("l", 256, 512, 3, 2, 256, 2e-3),
]
SEQ2SEQ_DATA_ROWS = [2_000, 20_000, 200_000]  # training pairs below which row 0, 1, 2 fits
SEQ2SEQ_BUDGET_ROWS = [3, 10, 120]  # minutes below which row 0, 1, 2 is the largest the budget trains
SEQ2SEQ_DROPOUT = [0.3, 0.2, 0.05, 0.1]  # by the data's row, when the budget did not cap the model
SEQ2SEQ_CAPPED_DROPOUT = 0.05


class Seq2SeqControls(BaseModel):
    """How to turn inputs into outputs."""

    model_config = ConfigDict(extra="forbid")

    input: list[str] = Field(default_factory=list, description="The inputs to transform (e.g. words for G2P).")
    beam: int = Field(1, ge=1, le=64, description="Beam size; 1 is greedy (or sampling when temperature > 0).",
                      **aliases("beam", "num_beams"))
    n_best: int = Field(1, ge=1, le=64, description="Outputs per input, best first (at most --beam).")
    length_penalty: float = Field(0.0, ge=0, le=5, description="GNMT length penalty alpha; above 0 favours longer outputs.")
    coverage_penalty: float = Field(0.0, ge=0, le=5, description="GNMT coverage penalty beta; above 0 favours covering the whole input.")
    min_length: int = Field(0, ge=0, description="Shortest output in symbols.")
    max_length: int = Field(0, ge=0, description="Longest output in symbols; 0 = twice the input plus 10.")
    no_repeat_ngram_size: int = Field(0, ge=0, description="Never repeat a run of this many output symbols; 0 = off.")
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False, description="Sample instead of searching when above 0 (beam 1 only).")
    top_k: int = Field(0, ge=0, description="When sampling: only the k likeliest symbols; 0 = off.")
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False, description="When sampling: nucleus mass; 1 = off.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed for sampling.")
    attention_plot: str | None = Field(None, description="Write the attention matrix of the first input to this PNG.")
    policy: str | None = Field(None, description="A moderation policy TOML file for the inputs and outputs, on top "
                               "of (or, with extends = \"none\", instead of) the default policy.")
    ban: list[str] = Field(default_factory=list, description="A word the outputs may not hold (character and BPE "
                           "targets; on top of the policy's block and redact words).")


class _VocabTokenizer:
    """A target vocabulary seen as the tokenizer the ban processor reads (vocab_size, decode)."""

    def __init__(self, vocab: Vocab) -> None:
        self.vocab_size, self.decode = vocab.size, vocab.decode


class PairStream:
    """Encoded pairs as the Trainer's batch source: random batches to train, fixed chunks to validate."""

    def __init__(self, sources: list[list[int]], targets: list[list[int]]) -> None:
        self.sources, self.targets = sources, targets

    def __len__(self) -> int:
        return len(self.sources)

    def _collate(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        return collate([self.sources[i] for i in indices], [self.targets[i] for i in indices])

    def sample(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self._collate(torch.randint(0, len(self), (batch_size,), generator=generator).tolist())

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        # sorted by length so padding stays small; order does not change a summed loss
        order = sorted(range(len(self)), key=lambda i: len(self.sources[i]))
        chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for chunk in chunks[:limit] if limit else chunks:
            yield self._collate(chunk)


def pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    out = torch.full((len(rows), max(1, max(len(r) for r in rows))), PAD, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, :len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def collate(sources: Sequence[list[int]], targets: Sequence[list[int]]) -> dict[str, torch.Tensor]:
    return {"src": pad(sources), "src_len": torch.tensor([len(s) for s in sources]),
            "tgt_in": pad([[BOS, *t] for t in targets]), "tgt_out": pad([[*t, EOS] for t in targets])}


class TextSeq2SeqRecipe(Recipe):
    pipeline_tag = "text2text-generation"
    name = "text-seq2seq"
    summary = "RNN encoder-decoder with attention on paired data: grapheme-to-phoneme, translation, rewriting"
    config_class = Seq2SeqRecipeConfig
    controls_class = Seq2SeqControls
    default_data = "builtin:cmudict"
    data_formats = ("a .tsv file (source TAB target per line) or a .jsonl file (\"source\" and \"target\" per "
                    "line); pairs are split into train/validation/test by their source")
    builtin_data = {f"builtin:{name}": about for name, about in BUILTIN_PAIR_SOURCES.items()}
    # Inputs are transformed, not continued: a word to pronounce is recorded by moderation, never blocked
    capabilities = Capabilities(main_control="input", inputs={"input": "transform"}, text_outputs=True)
    presets = {
        "tiny": {
            "model": {"emb_dim": 16, "hidden": 32, "enc_layers": 1, "dec_layers": 1, "dropout": 0.0},
            "train": {"max_steps": 30, "batch_size": 16, "lr": 5e-3, "warmup_steps": 5, "eval_every": 10,
                      "eval_batches": 2, "checkpoint_every": 10, "log_every": 5},
            "eval": {"beam": 3},
        },
        "default": {},
        "base": {
            "model": {"emb_dim": 256, "hidden": 512, "enc_layers": 3, "dec_layers": 2, "dropout": 0.3},
            "train": {"max_steps": 30000, "batch_size": 128, "lr": 1e-3, "eval_every": 2000, "checkpoint_every": 2000},
        },
    }

    # -- data -------------------------------------------------------------------------------------
    def prepare_data(self, cfg: Seq2SeqRecipeConfig, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        corpus = load_pairs(data, keep_stress=cfg.data.keep_stress)
        target_kind = cfg.data.target_kind
        if target_kind == "auto":
            target_kind = "symbols" if corpus.target_is_symbols else "char"
        if assets:
            source_vocab, target_vocab = assets["source_vocab"], assets["target_vocab"]
        else:
            source_vocab = build_vocab((s for s, _ in corpus.train), cfg.data.source_kind, bpe_size=cfg.data.bpe_size)
            target_vocab = build_vocab((t for _, t in corpus.train), target_kind, bpe_size=cfg.data.bpe_size)

        def encode(pairs: list[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]], int]:
            sources, targets, dropped = [], [], 0
            for source, target in pairs:
                s, t = source_vocab.encode(source), target_vocab.encode(target)
                if not s or not t or len(s) > cfg.data.max_length or len(t) > cfg.data.max_length:
                    dropped += 1
                    continue
                sources.append(s)
                targets.append(t)
            return sources, targets, dropped

        train_s, train_t, dropped = encode(corpus.train)
        val_s, val_t, _ = encode(corpus.val)
        if not train_s or not val_s:
            raise DataError(f"{corpus.source} has too few usable pairs ({len(train_s)} training, {len(val_s)} "
                            f"validation); add pairs or raise data.max_length")
        info = {"spec": data, "source": corpus.source, "fingerprint": corpus.fingerprint, **corpus.info,
                "train_pairs": len(train_s), "val_pairs": len(val_s), "test_pairs": len(corpus.test),
                "dropped_too_long": dropped, "target_kind": target_kind,
                "source_vocab_size": source_vocab.size, "target_vocab_size": target_vocab.size}
        return PreparedData(PairStream(train_s, train_t), PairStream(val_s, val_t), info,
                            {"source_vocab": source_vocab, "target_vocab": target_vocab, "corpus": corpus})

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        pairs = stats["train_pairs"]
        data_row = size_row(pairs, SEQ2SEQ_DATA_ROWS)
        row = data_row if budget_minutes is None else min(data_row, size_row(budget_minutes, SEQ2SEQ_BUDGET_ROWS))
        name, emb, hidden, enc, dec, batch, lr = SEQ2SEQ_SIZES[row]
        layer = {"model": {"emb_dim": emb, "hidden": hidden, "enc_layers": enc, "dec_layers": dec,
                           "dropout": SEQ2SEQ_DROPOUT[data_row] if row == data_row else SEQ2SEQ_CAPPED_DROPOUT},
                 "train": {"batch_size": batch, "lr": lr}}
        capped = " (capped by the budget)" if row < data_row else ""
        return Sizing(rule=f"{name}{capped}", inputs={
            "train_pairs": pairs, "source_vocab_size": stats["source_vocab_size"],
            "target_vocab_size": stats["target_vocab_size"],
            "budget_minutes": budget_minutes}, layer=layer)

    def build_model(self, cfg: Seq2SeqRecipeConfig, assets: dict[str, Any]) -> Seq2Seq:
        return Seq2Seq(cfg.model.model_copy(update={"src_vocab_size": assets["source_vocab"].size,
                                                    "tgt_vocab_size": assets["target_vocab"].size}))

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        save_vocabs(run.path, assets["source_vocab"], assets["target_vocab"])

    def load_assets(self, cfg: Seq2SeqRecipeConfig, run: RunDir) -> dict[str, Any]:
        source_vocab, target_vocab = load_vocabs(run.path)
        return {"source_vocab": source_vocab, "target_vocab": target_vocab}

    def check_transfer(self, cfg: Seq2SeqRecipeConfig, source_cfg: Seq2SeqRecipeConfig, prepared: PreparedData,
                       source: Path) -> None:
        if cfg.data.source_kind != source_cfg.data.source_kind:
            raise ConfigError(f"data.source_kind differs from that of '{source}'; --init-from keeps its vocabularies")

    # -- generation -------------------------------------------------------------------------------
    def transduce(self, model: Seq2Seq, assets: dict[str, Any], inputs: Sequence[str], controls: Seq2SeqControls,
                  batch_size: int = 256, ban: Sequence[str] = ()) -> list[list[Hypothesis]]:
        """Outputs for many inputs, decoded `batch_size` at a time, never writing a word of `ban`."""
        source_vocab: Vocab = assets["source_vocab"]
        results: list[list[Hypothesis]] = []
        device = next(model.parameters()).device
        bans = self._bans(assets["target_vocab"], ban)
        model.eval()
        for start in range(0, len(inputs), batch_size):
            # an empty input still needs one position for the encoder to read
            chunk = [source_vocab.encode(text) or [UNK] for text in inputs[start:start + batch_size]]
            results += self._decode(model, chunk, controls, device, bans)
        return results

    @staticmethod
    def _bans(target_vocab: Vocab, words: Sequence[str]) -> LogitsProcessorList:
        """The words to ban (the policy's block and redact words, and --ban) as a decode-time ban on character
        and BPE targets. Symbol targets (phonemes) are not words, so they get none; outputs are still moderated."""
        if target_vocab.kind == "symbols" or not words:
            return LogitsProcessorList()
        return LogitsProcessorList([build_ban_processor(list(words), _VocabTokenizer(target_vocab), EOS)])

    def _decode(self, model: Seq2Seq, chunk: list[list[int]], controls: Seq2SeqControls,
                device: torch.device, bans: LogitsProcessorList) -> list[list[Hypothesis]]:
        src = pad(chunk).to(device)
        src_len = torch.tensor([len(c) for c in chunk])
        max_len = controls.max_length or 2 * int(src_len.max()) + 10
        if controls.min_length > max_len:
            raise ControlError(f"--min-length {controls.min_length} is longer than the longest output allowed here "
                               f"({max_len}: --max-length, or twice the input plus 10 when it is 0)")
        with torch.no_grad():
            state = model.encode(src, src_len)
            if controls.temperature > 0 and controls.beam == 1:
                return self._sample(model, state, len(chunk), controls, max_len, device, bans)
            return beam_search(model.decode_step, lambda s, i: s.index_select(i), state, len(chunk), bos_id=BOS,
                               eos_id=EOS, beam_size=controls.beam, n_best=min(controls.n_best, controls.beam),
                               max_len=max_len, min_len=controls.min_length,
                               length_penalty=controls.length_penalty, coverage_penalty=controls.coverage_penalty,
                               no_repeat_ngram_size=controls.no_repeat_ngram_size, processors=bans,
                               src_mask=state.mask)

    def _sample(self, model: Seq2Seq, state: Any, n: int, controls: Seq2SeqControls, max_len: int,
                device: torch.device, bans: LogitsProcessorList) -> list[list[Hypothesis]]:
        sampling = TextGenerationControls(max_new_tokens=max_len, temperature=controls.temperature,
                                          top_k=controls.top_k, top_p=controls.top_p,
                                          no_repeat_ngram_size=controls.no_repeat_ngram_size, seed=controls.seed)
        holder = {"state": state}

        def step(new_ids: torch.Tensor) -> torch.Tensor:
            logits, holder["state"], _ = model.decode_step(new_ids[:, -1], holder["state"])
            return logits

        generator = torch.Generator(device=device).manual_seed(controls.seed)
        rows = generate_tokens(step, torch.full((n, 1), BOS, dtype=torch.long, device=device), sampling,
                               generator=generator, processors=LogitsProcessorList([*bans, *build_processors(sampling)]),
                               eos_id=EOS)
        return [[Hypothesis(tokens=row, score=0.0, log_prob=0.0, attention=None)] for row in rows]

    def generate(self, model: Seq2Seq, cfg: Seq2SeqRecipeConfig, assets: dict[str, Any],
                 controls: Seq2SeqControls, context: GenerationContext) -> SequenceResult:
        if not controls.input:
            raise ControlError("give at least one input: --input WORD (repeatable) or --input-file FILE")
        if controls.n_best > controls.beam:
            raise ControlError(f"--n-best {controls.n_best} needs --beam of at least {controls.n_best}")
        target_vocab: Vocab = assets["target_vocab"]
        hypotheses = self.transduce(model, assets, controls.input, controls, cfg.eval.batch_size, context.ban_words)
        # symbol targets (phonemes) come back as lists, ready for a speech front end
        if target_vocab.kind == "symbols":
            nbest = [[target_vocab.decode_symbols(h.tokens) for h in hyps] for hyps in hypotheses]
        else:
            nbest = [[target_vocab.decode(h.tokens) for h in hyps] for hyps in hypotheses]
        if controls.attention_plot:
            self._plot_attention(assets, controls.input[0], hypotheses[0][0], Path(controls.attention_plot))
        return SequenceResult(
            inputs=list(controls.input), nbest=nbest, scores=[[h.score for h in hyps] for hyps in hypotheses],
            attention=[None if hyps[0].attention is None else hyps[0].attention.numpy() for hyps in hypotheses],
            input_indices=list(range(len(hypotheses))))

    def _plot_attention(self, assets: dict[str, Any], text: str, hyp: Hypothesis, out: Path) -> None:
        from muselab.report.plots import plot_attention

        if hyp.attention is None:
            raise ControlError("--attention-plot needs beam search output (temperature 0)")
        source = assets["source_vocab"].decode_symbols(assets["source_vocab"].encode(text))
        target = assets["target_vocab"].decode_symbols(hyp.tokens) + ["</s>"]
        plot_attention(hyp.attention[: len(target), : len(source)].numpy(), source, target[: len(hyp.attention)], out)

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, model: Seq2Seq, cfg: Seq2SeqRecipeConfig, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> dict[str, Any]:
        prepared = self.prepare_data(cfg, data, assets)
        device = next(model.parameters()).device
        val_loss = mean_loss(model, prepared.val, cfg.train.batch_size, device)
        split = cfg.eval.split
        test = [(s, t) for s, t in getattr(prepared.assets["corpus"], split) if s.strip()]
        if not test:
            raise DataError(f"the data has no {split} split to evaluate on")
        sources, references = [s for s, _ in test], [t for _, t in test]
        metrics: dict[str, Any] = {"val_loss": val_loss, "split": split, f"{split}_pairs": len(test)}
        target_vocab: Vocab = assets["target_vocab"]
        symbols = prepared.info["target_kind"] == "symbols"
        samples = []
        for label, beam in (("greedy", 1), (f"beam{cfg.eval.beam}", cfg.eval.beam)):
            hyps = self.transduce(model, assets, sources, Seq2SeqControls(input=["x"], beam=beam), cfg.eval.batch_size)
            outputs = [target_vocab.decode(h[0].tokens) for h in hyps]
            if symbols:
                hyp_symbols, ref_symbols = [o.split() for o in outputs], [r.split() for r in references]
                scores = {"wer": word_error_rate(hyp_symbols, ref_symbols),
                          "per": phoneme_error_rate(hyp_symbols, ref_symbols)}
            else:
                scores = corpus_bleu_chrf(outputs, references)
            metrics.update({f"{k}_{label}": v for k, v in scores.items()})
            if beam == cfg.eval.beam:
                metrics.update(scores)  # the headline numbers are the beam's
                samples = [f"{s}\t{o}\t(reference: {r})"
                           for s, o, r in zip(sources[:20], outputs[:20], references[:20], strict=True)]
        metrics["decoding"] = f"beam {cfg.eval.beam}"
        return Evaluation(metrics, samples=samples, sample_controls={"beam": cfg.eval.beam})
