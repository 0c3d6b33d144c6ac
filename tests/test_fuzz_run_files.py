"""Every file muselab reads from a run directory or its cache, damaged at random: each command either
works or ends in one `muselab: error:` line (exit 2), never a traceback, and leaves no half-written file.

One small real run of every recipe is trained once for the module; each hypothesis example copies a run,
damages one file the command reads (bytes flipped, cut, extended; JSON values swapped for values of other
types, keys deleted; safetensors headers rewritten) and calls `muselab.cli.main` in this process, so that
hundreds of cases run in a minute or two.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import struct
import tempfile
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from matplotlib.figure import Figure
from PIL import Image

from conftest import make_text
from muselab import api, cli

pytestmark = pytest.mark.slow

MIN_CASES = 500
CASES: dict[str, int] = {}

CONFIG, MODEL, STATE, STATE_JSON = "config.json", "model.safetensors", "trainer_state.safetensors", "trainer_state.json"
METRICS, EVAL = "metrics.jsonl", "eval.json"
CACHE = "<cache>/"  # prefix of a target that lives in $MUSELAB_CACHE, not in the run directory


@dataclass
class Spec:
    data: Callable[[Path], str | None]  # writes the recipe's data under a folder, returns --data (None: built-in)
    overrides: list[str]  # small evaluations, so that a case takes a fraction of a second
    generate: Callable[[Path], list[str]]  # small generation controls (given the data folder)
    assets: list[str]  # files of the run directory besides config, weights and trainer state
    examples: int  # cases, more for the recipes whose cases are quick
    evaluate_share: int = 1  # `evaluate` is drawn 1 in 4 times, or fewer where it takes seconds

    @property
    def commands(self) -> list[str]:
        return [*["info", "generate", "resume"] * self.evaluate_share, "evaluate"]


def _text(folder: Path) -> str:
    path = folder / "corpus.txt"
    path.write_text(make_text(200), encoding="utf-8")
    return str(path)


def _pairs(folder: Path) -> str:
    rng = random.Random(0)
    lines = []
    for _ in range(200):
        word = "".join(rng.choice("abcdefgh") for _ in range(rng.randint(3, 7)))
        lines.append(word + "\t" + " ".join(c.upper() + "H" for c in word))
    path = folder / "pairs.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def _images(folder: Path) -> str:
    """Two classes of small PNGs in a user's folder (so the decoded-image cache is made and read)."""
    rng = np.random.default_rng(0)
    root = folder / "pictures"
    if root.exists():  # both image recipes train on it
        return str(root)
    for cls, level in (("dark", 60), ("light", 190)):
        (root / cls).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(rng.normal(level, 30, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{i}.png")
    return str(root)


def _wav(folder: Path) -> Path:
    path = folder / "tone.wav"
    if not path.exists():
        t = np.arange(11025) / 22050
        sf.write(path, (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 22050)
    return path


_IMAGE_EVAL = ["data.size=16", "eval.samples=10", "eval.samples_per_class=10", "eval.reference_images=10"]
SPECS: dict[str, Spec] = {
    "text-lm": Spec(_text, ["eval.num_samples=2", "eval.sample_tokens=8"],
                    lambda d: ["--max-new-tokens", "8", "--prompt", "the "],
                    ["tokenizer.json", "copy_index.safetensors"], examples=100),
    "text-seq2seq": Spec(_pairs, [], lambda d: ["--input", "abc", "--input", "hag", "--beam", "2"], ["vocab.json"],
                         examples=100),
    "image-gan": Spec(_images, _IMAGE_EVAL, lambda d: ["--n", "2"], ["image_data.json"], examples=80,
                      evaluate_share=3),
    "image-vae": Spec(_images, _IMAGE_EVAL, lambda d: ["--n", "2"], ["image_data.json"], examples=90),
    "audio-ddsp": Spec(lambda d: None, ["data.tones_clips=4", "eval.clips=1", "eval.pitch_notes=2",
                                        "eval.realtime_seconds=1"],
                       lambda d: ["--notes", "C4:0.25 E4:0.25"], ["data_stats.json"], examples=70, evaluate_share=4),
    "audio-vocoder": Spec(lambda d: "builtin:tones", ["eval.realtime_seconds=0.5", "eval.max_seconds=1", "eval.samples=1",
                                           "eval.griffin_lim_iters=2"],
                          lambda d: ["--wav", str(_wav(d))], [], examples=80),
}


@dataclass
class Fixture:
    runs: dict[str, Path]
    data: Path
    cache: Path  # the module's $MUSELAB_CACHE, as the clean runs left it
    cache_files: dict[str, list[str]]  # recipe -> cache files (relative) its training and evaluation use
    work: Path


def _unrendered_savefig(self: Any, fname: Any, *args: Any, **kwargs: Any) -> None:
    """Figures are built from what the run holds, but not rendered: rendering is most of the time of a
    case, reads no file, and the plots' own tests render them."""
    if isinstance(fname, (str, os.PathLike)):
        Path(fname).write_bytes(b"")


@pytest.fixture(scope="module")
def fuzz(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Figure, "savefig", _unrendered_savefig)
        yield from _train_runs(tmp_path_factory)


def _train_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fixture]:
    base = tmp_path_factory.mktemp("fuzz")
    data, cache = base / "data", base / "cache"
    data.mkdir()
    before = os.environ.get("MUSELAB_CACHE")
    os.environ["MUSELAB_CACHE"] = str(cache)
    runs: dict[str, Path] = {}
    cache_files: dict[str, list[str]] = {}
    try:
        for name, spec in SPECS.items():
            seen = _files_under(cache)
            out = base / "runs" / name
            api.train(name, spec.data(data), out, preset="tiny", max_steps=2, overrides=spec.overrides, quiet=True)
            api.evaluate(out)  # a clean run works, and evaluation fills the cache
            runs[name] = out
            cache_files[name] = sorted(_files_under(cache) - seen)
        yield Fixture(runs, data, cache, cache_files, base / "cases")
    finally:
        if before is None:
            os.environ.pop("MUSELAB_CACHE", None)
        else:
            os.environ["MUSELAB_CACHE"] = before


def _files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _targets(spec: Spec, command: str, cache_files: list[str]) -> list[str]:
    """The files `command` reads (damaging any other file could not change its outcome)."""
    cache = [CACHE + f for f in cache_files]
    return {
        "info": [CONFIG, STATE_JSON, EVAL],
        "generate": [CONFIG, MODEL, *spec.assets],
        "evaluate": [CONFIG, MODEL, STATE_JSON, *spec.assets, *cache],
        "resume": [CONFIG, STATE, STATE_JSON, METRICS, *spec.assets, *cache],
    }[command]


# -- damage ---------------------------------------------------------------------------------------------
OTHER_VALUES: list[Any] = [None, True, False, 0, -1, 3, 2**63, 1e308, -0.5, "", "four", "[", [], [1, "a"], {},
                           {"a": 1}, [[0, 1]], {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}]


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place inside a JSON value (the root is ())."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:50]):  # long lists (vocabularies, merges): the first 50 do
            found += _paths(item, (*prefix, index))
    return found


def _mutate_json(value: Any, draw: st.DataObject) -> Any:
    """`value` with one place replaced by a value of another type, or one key or item deleted."""
    paths = _paths(value)
    path = paths[draw.draw(st.integers(0, len(paths) - 1), label="place")]
    op = draw.draw(st.sampled_from(["replace", "delete"]), label="json op")
    if not path:
        return draw.draw(st.sampled_from(OTHER_VALUES))
    parent = value
    for part in path[:-1]:
        parent = parent[part]
    if op == "delete":
        del parent[path[-1]]
    else:
        current = parent[path[-1]]
        choices = [v for v in OTHER_VALUES if type(v) is not type(current)]
        parent[path[-1]] = draw.draw(st.sampled_from(choices), label="new value")
    return value


def _mutate_bytes(raw: bytes, draw: st.DataObject) -> bytes:
    op = draw.draw(st.sampled_from(["flip", "truncate", "extend", "empty"]), label="byte op")
    if op == "empty":
        return b""
    if op == "truncate":
        return raw[:draw.draw(st.integers(0, max(0, len(raw) - 1)), label="keep")]
    if op == "extend":
        return raw + draw.draw(st.binary(min_size=1, max_size=64), label="tail")
    out = bytearray(raw)
    for _ in range(draw.draw(st.integers(1, 8), label="flips")):
        if out:
            # flips near the start hit headers and JSON syntax; elsewhere, data
            at = draw.draw(st.one_of(st.integers(0, min(len(out), 200) - 1), st.integers(0, len(out) - 1)))
            out[at] ^= draw.draw(st.integers(1, 255), label="xor")
    return bytes(out)


def _mutate_safetensors(raw: bytes, draw: st.DataObject) -> bytes:
    """A damaged header: JSON that is not an object, offsets that overlap or run past the end, a length
    field larger than the file, a metadata entry (e.g. the trainer state) changed inside."""
    (length,) = struct.unpack("<Q", raw[:8])
    header, body = json.loads(raw[8:8 + length]), raw[8 + length:]
    tensors = [k for k in header if k != "__metadata__"]
    op = draw.draw(st.sampled_from(["json", "overlap", "past_end", "length", "metadata"]), label="header op")
    if op == "length":
        return struct.pack("<Q", draw.draw(st.sampled_from([len(raw), 2**40, 2**64 - 1, 1]))) + raw[8:]
    if op == "overlap" and len(tensors) >= 2:
        a, b = draw.draw(st.permutations(tensors), label="pair")[:2]
        header[a]["data_offsets"] = list(header[b]["data_offsets"])
    elif op == "past_end" and tensors:
        name = draw.draw(st.sampled_from(tensors), label="tensor")
        start, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [start, len(body) + draw.draw(st.integers(1, 4096))]
    elif op == "metadata" and isinstance(header.get("__metadata__"), dict) and header["__metadata__"]:
        meta = header["__metadata__"]
        key = draw.draw(st.sampled_from(sorted(meta)), label="metadata key")
        try:
            inner = json.loads(meta[key])
            meta[key] = json.dumps(_mutate_json(inner, draw))
        except json.JSONDecodeError:
            meta[key] = draw.draw(st.sampled_from(["", "{", "[]", "null", "7", meta[key][::-1]]))
    else:
        header = _mutate_json(header, draw)
    blob = json.dumps(header).encode()
    return struct.pack("<Q", len(blob)) + blob + body


def damage(path: Path, draw: st.DataObject) -> str:
    """Damage the file in place; returns how, for the failure message."""
    raw = path.read_bytes()
    kinds = ["bytes"]
    if path.suffix == ".json":
        kinds += ["json", "json"]
    if path.suffix == ".safetensors":
        kinds += ["header", "header"]
    kind = draw.draw(st.sampled_from(kinds), label="damage")
    if kind == "json":
        try:
            raw = json.dumps(_mutate_json(json.loads(raw), draw)).encode()
        except json.JSONDecodeError:
            kind = "bytes"
    elif kind == "header":
        raw = _mutate_safetensors(raw, draw)
    if kind == "bytes":
        raw = _mutate_bytes(raw, draw)
    path.write_bytes(raw)
    return kind


# -- running --------------------------------------------------------------------------------------------
def run_main(args: list[str]) -> tuple[int, str]:
    """`muselab ARGS` in this process: (exit status, stderr). Any exception escaping main is a bug."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = cli.main(args)
        except SystemExit as stop:
            status = 0 if stop.code is None else stop.code if isinstance(stop.code, int) else 2
        except Exception:
            pytest.fail(f"muselab {' '.join(args)} raised:\n{traceback.format_exc()}\nstderr:\n{err.getvalue()}")
    return status, err.getvalue()


def command_line(recipe: str, command: str, run: Path, fixture: Fixture, out: Path) -> list[str]:
    if command == "resume":
        return ["train", "--out", str(run), "--resume", "--quiet", "--max-steps", "3"]
    if command == "generate":
        return ["generate", str(run), "--seed", "1", "--out", str(out), *SPECS[recipe].generate(fixture.data)]
    return [command, str(run)]


def check_case(fixture: Fixture, recipe: str, draw: st.DataObject) -> None:
    command = draw.draw(st.sampled_from(SPECS[recipe].commands), label="command")
    target = draw.draw(st.sampled_from(_targets(SPECS[recipe], command, fixture.cache_files[recipe])), label="file")
    fixture.work.mkdir(exist_ok=True)
    case = Path(tempfile.mkdtemp(dir=fixture.work))
    run = case / "run"
    shutil.copytree(fixture.runs[recipe], run)
    cache = fixture.cache
    if target.startswith(CACHE):
        cache = case / "cache"
        shutil.copytree(fixture.cache, cache)
        file = cache / target[len(CACHE):]
    else:
        file = run / target
    how = damage(file, draw) if file.is_file() else "missing"
    args = command_line(recipe, command, run, fixture, case / "out")
    before = os.environ["MUSELAB_CACHE"]
    os.environ["MUSELAB_CACHE"] = str(cache)
    try:
        status, stderr = run_main(args)
    finally:
        os.environ["MUSELAB_CACHE"] = before
    where = f"{recipe}: {target} damaged ({how}), `muselab {' '.join(args)}`"
    assert "Traceback" not in stderr, f"{where} printed a traceback:\n{stderr}"
    assert status in (0, 2), f"{where} exited {status}:\n{stderr}"
    if status == 2:
        errors = [line for line in stderr.splitlines() if line.startswith("muselab: error:")]
        last = stderr.rstrip("\n").rsplit("\n", 1)[-1]
        assert len(errors) == 1 and last == errors[0], f"{where} should end in one error line:\n{stderr}"
    leftovers = [p for p in case.rglob("*.tmp")]
    assert not leftovers, f"{where} left half-written files: {leftovers}"
    CASES[recipe] = CASES.get(recipe, 0) + 1
    shutil.rmtree(case)


@pytest.mark.parametrize("recipe", list(SPECS))
def test_damaged_run_files_work_or_end_in_one_line(fuzz: Fixture, recipe: str) -> None:
    @settings(max_examples=SPECS[recipe].examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(draw=st.data())
    def case(draw: st.DataObject) -> None:
        check_case(fuzz, recipe, draw)

    case()


def test_enough_cases_ran() -> None:
    if set(CASES) != set(SPECS):
        pytest.skip("runs only after the fuzz test of every recipe")
    assert sum(CASES.values()) >= MIN_CASES, CASES
