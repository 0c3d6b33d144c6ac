"""The `text-lm` recipe: a character or BPE Transformer language model on the user's text."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field

from muselab.core.config import Section, TrainConfig
from muselab.core.errors import ConfigError, ControlError, DataError
from muselab.core.registry import (
    Capabilities,
    Evaluation,
    ExportSpec,
    GenerationContext,
    MemorizationGuard,
    PreparedData,
    Recipe,
    Sizing,
)
from muselab.core.results import TextResult
from muselab.core.rundir import RunDir
from muselab.core.sizing import TransformerRows
from muselab.core.trainer import mean_loss
from muselab.data.text import BUILTIN_TEXT_SOURCES, load_text_corpus, split_train_val
from muselab.text.bans import BannedWordsProcessor, build_ban_processor
from muselab.text.controls import DEFAULT_MAX_COPY_CHARS, TextGenerationControls
from muselab.text.decoding import StopStrings, build_processors, generate_tokens
from muselab.text.lm import GPT, GPTConfig, NextTokenLogits
from muselab.text.metrics import CopyIndex, load_copy_index, text_diversity_report
from muselab.text.tokenizers import TOKENIZER_FILE, Tokenizer, load_tokenizer, train_tokenizer

# The training text's suffix array, saved with the run so `generate` can tell copies from new text
# (about 5 bytes per character of training text; 0.4 s to build and 20 ms to load for 1.1 MB).
COPY_INDEX_FILE = "copy_index.safetensors"
NO_COPY_INDEX = ("this run has no copy index ({file}; runs trained before the memorization guard lack it), "
                 "so --max-copy-chars is not checked; train the run again to get one")
RESAMPLE_ATTEMPTS = 3  # re-samples of a copying sample before `reject` gives up


class TextDataConfig(Section):
    val_fraction: float = Field(0.1, gt=0, lt=0.5, description="share of the text, from its end, held out")


class TokenizerConfig(Section):
    kind: Literal["char", "bpe"] = Field("char", description="character-level or byte-level BPE")
    vocab_size: int = Field(2000, ge=257, le=1_000_000, description="BPE vocabulary size")


class TextEvalConfig(Section):
    num_samples: int = Field(20, ge=2, description="samples generated for the diversity metrics")
    sample_tokens: int = Field(300, ge=1, description="tokens per evaluation sample")
    temperature: float = Field(0.8, ge=0, description="sampling temperature for evaluation samples")
    min_copy_chars: int = Field(50, ge=1, description="a verbatim copy this long makes a sample not novel")
    seed: int = Field(0, description="seed for evaluation samples")


class TextLMConfig(Section):
    data: TextDataConfig = TextDataConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    # The CPU default: small and fast beats large and slow when the budget is minutes on 2 cores
    # (benchmarks/bench_text_lm.py compares shapes; see benchmarks/results/).
    model: GPTConfig = GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=64, dropout=0.0)
    train: TrainConfig = TrainConfig(
        max_steps=2000, batch_size=32, lr=5e-3, warmup_steps=100, min_lr_ratio=0.05, precision="auto",
        eval_every=250, eval_batches=20, checkpoint_every=250, weight_decay=0.1, beta2=0.99,
    )
    eval: TextEvalConfig = TextEvalConfig()


# The default preset's sizing rule (README: "Defaults that fit the data"). Rows, smallest first:
# (name, n_layer, n_head, n_embd, block_size, batch_size, lr). The data picks a row by training tokens, the
# budget caps it (a short budget cannot train a large model). Dropout follows the data's row, and is off
# when the budget capped the model: a model smaller than its data, trained briefly, underfits. Calibration
# (230 k characters of builtin:words, 4x128, context 64, fp32, 4,000 steps, about what 5 quiet CPU minutes
# take): dropout 0.1 at lr 5e-3 ended at 2.164 (best 2.160), the earlier preset (dropout 0, 2,000 steps) at
# 2.215 (best 2.203); dropout 0.2 at lr 3e-3 trailed dropout 0.1 by 0.006-0.011 from step 1,000 to 2,000.
# benchmarks/bench_small_data.py checks it under a real budget.
LM_ROWS = TransformerRows(
    sizes=[
        ("xs", 2, 2, 64, 64, 32, 5e-3),
        ("s", 4, 4, 128, 64, 32, 5e-3),
        ("m", 4, 6, 192, 128, 32, 2e-3),
        ("l", 6, 8, 256, 256, 32, 1e-3),
        ("xl", 6, 6, 384, 256, 64, 1e-3),
    ],
    data_limits=[50_000, 500_000, 5_000_000, 50_000_000],
    budget_limits=[2, 15, 60, 240],
    dropout=[0.2, 0.1, 0.1, 0.1, 0.0],
    weight_decay=0.1,
)


class TokenStream:
    """A token sequence as the Trainer's batch source: random windows to train, tiled windows to validate."""

    def __init__(self, ids: torch.Tensor, block_size: int) -> None:
        self.ids = ids
        self.block = min(block_size, len(ids) - 1)

    def sample(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(self.ids) - self.block, (batch_size,), generator=generator)
        offsets = torch.arange(self.block + 1)
        windows = self.ids[starts[:, None] + offsets[None, :]]
        return windows[:, :-1], windows[:, 1:]

    def eval_batches(self, batch_size: int, limit: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n_windows = (len(self.ids) - 1) // self.block
        starts = torch.arange(n_windows) * self.block
        if limit and limit * batch_size < n_windows:
            # spread a limited validation over the whole split instead of its first pages
            pick = torch.linspace(0, n_windows - 1, limit * batch_size).round().long()
            starts = starts[pick]
        offsets = torch.arange(self.block + 1)
        for chunk in starts.split(batch_size):
            windows = self.ids[chunk[:, None] + offsets[None, :]]
            yield windows[:, :-1], windows[:, 1:]


def _encode(tokenizer: Tokenizer, text: str) -> torch.Tensor:
    return torch.tensor(tokenizer.encode(text, strict=False), dtype=torch.long)


class TextLMRecipe(Recipe):
    pipeline_tag = "text-generation"
    name = "text-lm"
    summary = "decoder-only Transformer language model (char or BPE) on a .txt file, folder or JSONL"
    config_class = TextLMConfig
    controls_class = TextGenerationControls
    default_data = "builtin:words"
    data_formats = ("a UTF-8 .txt file, a folder of .txt files (read in name order), or a .jsonl file with a "
                    "\"text\" field per line")
    builtin_data = {f"builtin:{name}": about for name, about in BUILTIN_TEXT_SOURCES.items()}
    capabilities = Capabilities(main_control="prompt", inputs={"prompt": "steer"}, text_outputs=True,
                                streams_text=True)
    presets = {
        "tiny": {
            "model": {"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 32, "dropout": 0.0},
            "train": {"max_steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 5, "eval_every": 10,
                      "eval_batches": 4, "checkpoint_every": 10, "log_every": 5, "precision": "fp32"},
            "eval": {"num_samples": 4, "sample_tokens": 40},
        },
        "default": {},
        "base": {
            "model": {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256, "dropout": 0.2},
            "train": {"max_steps": 5000, "batch_size": 64, "lr": 1e-3, "warmup_steps": 200,
                      "eval_every": 500, "checkpoint_every": 1000},
        },
    }

    # -- data -------------------------------------------------------------------------------------
    def prepare_data(self, cfg: TextLMConfig, data: str, assets: dict[str, Any] | None = None) -> PreparedData:
        corpus = load_text_corpus(data)
        train_text, val_text = split_train_val(corpus.text, cfg.data.val_fraction)
        tokenizer = assets["tokenizer"] if assets else train_tokenizer(
            cfg.tokenizer.kind, train_text, cfg.tokenizer.vocab_size)
        train_ids, val_ids = _encode(tokenizer, train_text), _encode(tokenizer, val_text)
        if len(train_ids) < 2 or len(val_ids) < 2:
            raise DataError(f"{corpus.source} is too short to train on ({len(train_ids)} training and "
                            f"{len(val_ids)} validation tokens); give it more text")
        info = {
            "spec": data, "source": corpus.source, "fingerprint": corpus.fingerprint,
            "documents": corpus.n_documents, "train_chars": len(train_text), "val_chars": len(val_text),
            "train_tokens": len(train_ids), "val_tokens": len(val_ids), "vocab_size": tokenizer.vocab_size,
            "unknown_tokens": int((train_ids == 0).sum()) if tokenizer.kind == "char" else 0,
        }
        return PreparedData(TokenStream(train_ids, cfg.model.block_size), TokenStream(val_ids, cfg.model.block_size),
                            info, {"tokenizer": tokenizer, "train_text": train_text, "val_text": val_text})

    def size_for_data(self, stats: dict[str, Any], budget_minutes: float | None) -> Sizing:
        return LM_ROWS.size(stats["train_tokens"], budget_minutes,
                            {"train_tokens": stats["train_tokens"], "vocab_size": stats["vocab_size"]})

    def resize_data(self, prepared: PreparedData, cfg: TextLMConfig) -> PreparedData:
        block = cfg.model.block_size
        return PreparedData(TokenStream(prepared.train.ids, block), TokenStream(prepared.val.ids, block),
                            prepared.info, prepared.assets)

    def build_model(self, cfg: TextLMConfig, assets: dict[str, Any]) -> GPT:
        model_cfg = cfg.model.model_copy(update={"vocab_size": assets["tokenizer"].vocab_size})
        if model_cfg.n_embd % model_cfg.n_head:
            raise ConfigError(f"model.n_embd ({model_cfg.n_embd}) must be divisible by model.n_head "
                              f"({model_cfg.n_head})")
        return GPT(model_cfg)

    def save_assets(self, assets: dict[str, Any], run: RunDir) -> None:
        assets["tokenizer"].save(run.path)
        CopyIndex(assets["train_text"]).save(run / COPY_INDEX_FILE)

    def load_assets(self, cfg: TextLMConfig, run: RunDir) -> dict[str, Any]:
        return {"tokenizer": load_tokenizer(run.path), "copy_index": LazyCopyIndex(run / COPY_INDEX_FILE)}

    def export_module(self, model: GPT, cfg: TextLMConfig, assets: dict[str, Any]) -> ExportSpec:
        block, tokenizer = model.cfg.block_size, assets["tokenizer"]
        example = torch.randint(0, model.cfg.vocab_size, (2, min(8, block)), generator=torch.Generator().manual_seed(0))
        return ExportSpec(
            NextTokenLogits(model), (example,), ["input_ids"], ["logits"],
            {"input_ids": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}},
            description="one decoding step without a key/value cache: the next token's logits after each row of "
                        f"token ids; feed the last {block} tokens of the text so far, pick a token from the "
                        "logits (temperature, top-k, ...), append it and repeat",
            meaning={"input_ids": f"int64 token ids of {TOKENIZER_FILE}, 1 to {block} per row (the context window)",
                     "logits": f"float32 unnormalised scores of the next token, one per id of the vocabulary "
                               f"({model.cfg.vocab_size})"},
            axis_max={"sequence": block},
            pair_with={"tokenizer": TOKENIZER_FILE, "tokenizer_kind": tokenizer.kind,
                       "vocab_size": model.cfg.vocab_size, "context_tokens": block,
                       "empty_prompt_ids": _start_ids(tokenizer, "")})

    def check_transfer(self, cfg: TextLMConfig, source_cfg: TextLMConfig, prepared: PreparedData,
                       source: Path) -> None:
        # --init-from reuses the source's tokenizer, so embeddings keep their meaning
        if cfg.tokenizer != source_cfg.tokenizer:
            raise ConfigError(f"tokenizer settings {cfg.tokenizer.model_dump()} differ from those of '{source}' "
                              f"{source_cfg.tokenizer.model_dump()}; --init-from keeps the source's tokenizer")
        unknown, total = prepared.info["unknown_tokens"], prepared.info["train_tokens"]
        if unknown > 0.001 * total:
            missing = sorted(set(prepared.assets["train_text"]) - set(prepared.assets["tokenizer"].decode(
                range(prepared.assets["tokenizer"].vocab_size))))[:10]
            raise ConfigError(f"the tokenizer of '{source}' does not know {unknown} of {total} characters of the "
                              f"new data (e.g. {', '.join(map(repr, missing))}); fine-tune on text in the same "
                              "alphabet or train from scratch")

    # -- generation -------------------------------------------------------------------------------
    def _sampler(self, model: GPT, assets: dict[str, Any], controls: TextGenerationControls,
                 context: GenerationContext) -> Callable[..., list[str]]:
        """`sample(prompts, n, seed, on_tokens=None)`: n continuations of each prompt, which must all be of one
        length in tokens (one batch), decoded under the context's bans."""
        tokenizer: Tokenizer = assets["tokenizer"]
        bans = build_ban_processor(context.ban_words, tokenizer) if context.ban_words else None
        processors = build_processors(controls)
        if bans is not None:
            processors.insert(0, bans)  # first, so the warpers choose among allowed tokens
        stop = StopStrings(controls.stop, tokenizer.decode) if controls.stop else None
        device = next(model.parameters()).device

        def sample(prompts: Sequence[str], n: int, seed: int, on_tokens: _Streamer | None = None) -> list[str]:
            rows = [_start_ids(tokenizer, prompt) for prompt in prompts for _ in range(n)]
            generator = torch.Generator(device=device).manual_seed(seed)
            out = generate_tokens(model.cached_step(len(rows)), torch.tensor(rows, dtype=torch.long, device=device),
                                  controls, generator=generator, processors=processors, stop_criteria=stop,
                                  on_tokens=on_tokens)
            return [_finish_text(tokenizer.decode(row), prompt, stop, bans)
                    for row, prompt in zip(out, [p for p in prompts for _ in range(n)], strict=True)]

        return sample

    def generate(self, model: GPT, cfg: TextLMConfig, assets: dict[str, Any], controls: TextGenerationControls,
                 context: GenerationContext) -> TextResult:
        """`num_samples` continuations of each prompt; `context.on_text` sees sample 0 grow, prompt first.
        Prompts of the same length in tokens are decoded together, one batch per length."""
        prompts = [controls.prompt] if isinstance(controls.prompt, str) else list(controls.prompt)
        if not prompts:
            raise ControlError("give at least one prompt")
        sample = self._sampler(model, assets, controls, context)
        n = controls.num_samples
        single = len(prompts) == 1
        streaming = context.on_text is not None and controls.stream and n == 1 and single
        streamer = _Streamer(assets["tokenizer"], prompts[0], context.on_text, controls.stop) if streaming else None
        by_length: dict[int, list[int]] = {}
        for index, prompt in enumerate(prompts):
            by_length.setdefault(len(_start_ids(assets["tokenizer"], prompt)), []).append(index)
        texts: list[str] = [""] * (len(prompts) * n)
        for indices in by_length.values():
            # the batch holding the first prompt uses the seed itself, so one prompt gives what it always gave
            seed = controls.seed if indices[0] == 0 else _derived_seed(controls.seed, indices[0], -1)
            made = sample([prompts[i] for i in indices], n, seed, streamer if 0 in indices else None)
            for slot, text in enumerate(made):
                i = indices[slot // n]
                texts[i * n + slot % n] = prompts[i] + text
        return TextResult(texts=texts, prompts=[p for p in prompts for _ in range(n)],
                          prompt_indices=[i for i in range(len(prompts)) for _ in range(n)])

    def memorization_guard(self, model: GPT, cfg: TextLMConfig, assets: dict[str, Any],
                           controls: TextGenerationControls, context: GenerationContext) -> CopyGuard | str | None:
        if not controls.max_copy_chars or controls.memorization == "off":
            return None
        index = assets["copy_index"].get() if "copy_index" in assets else None
        if index is None:
            return NO_COPY_INDEX.format(file=COPY_INDEX_FILE)
        return CopyGuard(index, controls, self._sampler(model, assets, controls, context))

    # -- evaluation -------------------------------------------------------------------------------
    def evaluate(self, model: GPT, cfg: TextLMConfig, assets: dict[str, Any], run: RunDir,
                 data: str | None) -> dict[str, Any]:
        prepared = self.prepare_data(cfg, data, assets)
        device = next(model.parameters()).device
        val_loss = mean_loss(model, prepared.val, cfg.train.batch_size, device, cfg.train.precision)
        val_text = prepared.assets["val_text"]
        tokens_per_char = prepared.info["val_tokens"] / max(1, len(val_text))
        # The copy guard is off here: the samples are measured against this data's training text below.
        controls = TextGenerationControls(max_new_tokens=cfg.eval.sample_tokens, temperature=cfg.eval.temperature,
                                          num_samples=cfg.eval.num_samples, seed=cfg.eval.seed, stream=False,
                                          max_copy_chars=0)
        samples = self.generate(model, cfg, assets, controls, GenerationContext(policy=None)).texts
        diversity = text_diversity_report(samples, CopyIndex(prepared.assets["train_text"]),
                                          min_copy_chars=cfg.eval.min_copy_chars,
                                          max_copy_chars=DEFAULT_MAX_COPY_CHARS)
        metrics = {
            "val_loss": val_loss,
            "perplexity": math.exp(val_loss),
            "bits_per_char": val_loss * tokens_per_char / math.log(2),
            **diversity,
        }
        return Evaluation(metrics, samples=samples, sample_controls=controls.model_dump())


class CopyGuard(MemorizationGuard):
    """A sample's longest verbatim copy of the training text (its continuation: the prompt is the user's),
    against `max_copy_chars`; a redraw samples again with a seed derived from the request's."""

    def __init__(self, index: CopyIndex, controls: TextGenerationControls, sample: Callable[..., list[str]]) -> None:
        self.index, self.controls, self.sample = index, controls, sample
        self.mode = controls.memorization
        self.attempts = RESAMPLE_ATTEMPTS

    def measure(self, result: TextResult, indices: Sequence[int]) -> list[float]:
        return [self.index.longest_copy(result.texts[i][len(result.prompts[i]):])[0] for i in indices]

    def too_close(self, value: float) -> bool:
        return value > self.controls.max_copy_chars

    def redraw(self, result: TextResult, indices: Sequence[int], attempt: int) -> None:
        for i in indices:
            continuation = self.sample([result.prompts[i]], 1, _derived_seed(self.controls.seed, i, attempt))[0]
            result.texts[i] = result.prompts[i] + continuation

    def note(self, value: float, redraws: int) -> dict[str, Any]:
        return {"memorization": {"checked": True, "longest_copy_chars": int(value),
                                 "max_copy_chars": self.controls.max_copy_chars, "flagged": self.too_close(value),
                                 "resampled": redraws}}

    def describe(self, index: int, value: float) -> str:
        if self.mode == "reject":
            return (f"sample {index + 1} still copies {int(value)} characters of the training text after "
                    f"{self.attempts} re-samples; raise --max-copy-chars or use --memorization flag")
        return (f"sample {index + 1} copies {int(value)} characters of the training text "
                f"(over --max-copy-chars {self.controls.max_copy_chars})")


class LazyCopyIndex:
    """The run's copy index, read on first use (generation without the guard never pays for it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: CopyIndex | None = None

    def get(self) -> CopyIndex | None:
        """The index, or None for a run trained before runs carried one."""
        if self._index is None and self.path.is_file():
            self._index = load_copy_index(self.path)
        return self._index


def _start_ids(tokenizer: Tokenizer, prompt: str) -> list[int]:
    """The prompt's tokens; an empty prompt starts the text as if after a blank line."""
    ids = tokenizer.encode(prompt, strict=True) if prompt else []
    return ids or tokenizer.encode("\n", strict=False) or [1]


def _finish_text(text: str, prompt: str, stop: StopStrings | None, bans: BannedWordsProcessor | None) -> str:
    """A row's continuation, cut at a stop string and without a banned word that max_new_tokens cut
    right after its last letter (the one case the ban processor cannot prevent; see text/bans.py)."""
    if stop:
        text = stop.truncate(text)
    if bans is not None:
        trimmed = bans.trim_trailing(prompt + text)
        text = trimmed[len(prompt):] if len(trimmed) >= len(prompt) else text
    return text


def _derived_seed(seed: int, sample: int, attempt: int) -> int:
    """A fresh seed for re-sampling one sample, the same on every run with the same seed."""
    return (seed * 1_000_003 + 7919 * (sample + 1) + attempt) % 2**63


class _Streamer:
    """Feeds the growing text of row 0 (prompt included) to `show` as tokens arrive.

    It holds back incomplete UTF-8 sequences, and enough trailing characters that a stop string
    completing later is never passed on before the final text cuts it.
    """

    def __init__(self, tokenizer: Tokenizer, prompt: str, show: Callable[[str], None], stop: list[str]) -> None:
        self.tokenizer, self.prompt, self.show = tokenizer, prompt, show
        self.holdback = max((len(s) for s in stop), default=0) + (16 if stop else 0)
        self.ids: list[int] = []

    def __call__(self, tokens: torch.Tensor) -> None:
        self.ids.append(int(tokens[0]))
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return
        self.show(self.prompt + (text[: len(text) - self.holdback] if self.holdback else text))
