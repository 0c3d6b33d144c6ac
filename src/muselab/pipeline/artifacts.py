"""The one writer of generated files: every file gets provenance, next to it and, where the format
allows, inside it (PNG chunks, WAV chunks), and pictures of 64 px and more and all audio carry an
invisible watermark. `save_result` writes any typed result through it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from muselab.core.artifacts import manifest as make_manifest
from muselab.core.artifacts import manifest_path
from muselab.core.errors import OutputExistsError
from muselab.core.io import atomic_write, atomic_write_json, atomic_write_text
from muselab.core.results import (
    AudioResult,
    ImageResult,
    MusicResult,
    Provenance,
    Result,
    SequenceResult,
    TextResult,
)


class ArtifactWriter:
    """Writes outputs under `out` (a directory, or a file name) and a manifest beside each one."""

    def __init__(self, provenance: Provenance, out: str | Path, overwrite: bool = False) -> None:
        self.provenance, self.out, self.overwrite = provenance, Path(out), overwrite

    def _targets(self, count: int, default_stem: str, suffix: str) -> list[Path]:
        if self.out.is_dir() or not self.out.suffix:
            return [self.out / f"{default_stem}_{i:03d}{suffix}" for i in range(count)]
        if count == 1:
            return [self.out]
        return [self.out.with_name(f"{self.out.stem}_{i:03d}{self.out.suffix}") for i in range(count)]

    def _check_free(self, paths: Sequence[Path]) -> None:
        if self.overwrite:
            return
        taken = [p for p in paths if p.exists() or manifest_path(p).exists()]
        if taken:
            raise OutputExistsError(f"'{taken[0]}' already exists; pass --overwrite or choose another --out")

    def write_lines(self, lines: Sequence[str], controls: dict[str, Any], note: dict[str, Any] | None = None
                    ) -> list[Path]:
        """One text file of result lines (e.g. input<TAB>output), with its manifest (plus `note`: the safety
        checks' `moderation` / `memorization` entries for the whole file)."""
        target = self.out / "outputs.tsv" if self.out.is_dir() else self.out
        self._check_free([target])
        atomic_write_text(target, "".join(line + "\n" for line in lines))
        atomic_write_json(manifest_path(target), {**make_manifest(self.provenance, controls, -1, target.name), **(note or {})})
        return [target]

    def write_texts(self, texts: Sequence[str], controls: dict[str, Any], notes: Sequence[dict[str, Any]] | None = None,
                    file_note: dict[str, Any] | None = None) -> list[Path]:
        """One file per text (or one .jsonl). `notes[i]` (the safety checks' entries for text i) joins its
        manifest; `file_note` joins the manifest of a .jsonl file as a whole."""
        def manifest(index: int, name: str) -> dict[str, Any]:
            extra = (notes[index] if notes is not None and index >= 0 else file_note) or {}
            return {**make_manifest(self.provenance, controls, index, name), **extra}

        if self.out.suffix == ".jsonl":
            # one file, one JSON line per sample, each line carrying its own manifest
            self._check_free([self.out])
            lines = [json.dumps({"text": t, "manifest": manifest(i, self.out.name)}, ensure_ascii=False)
                     for i, t in enumerate(texts)]
            atomic_write_text(self.out, "\n".join(lines) + "\n")
            atomic_write_json(manifest_path(self.out), manifest(-1, self.out.name))
            return [self.out]
        targets = self._targets(len(texts), "sample", ".txt")
        self._check_free(targets)
        for index, (text, path) in enumerate(zip(texts, targets, strict=True)):
            atomic_write_text(path, text)
            atomic_write_json(manifest_path(path), manifest(index, path.name))
        return targets

    def write_images(self, images: Sequence[np.ndarray], controls: dict[str, Any], grid: np.ndarray | None = None,
                     animation: bool = False, notes: Sequence[dict[str, Any]] | None = None) -> list[Path]:
        """PNG files (watermarked where big enough, manifest inside and beside), plus `grid.png` and, for an
        interpolation, `animation.gif` when writing into a folder."""
        from muselab.safety.embed import write_png
        from muselab.safety.watermark import embed_image

        targets = self._targets(len(images), "image", ".png")
        folder = targets[0].parent
        extras = {}
        if grid is not None and len(images) > 1:
            extras["grid.png"] = grid
        gif = folder / "animation.gif" if animation else None
        self._check_free([*targets, *(folder / name for name in extras), *([gif] if gif else [])])
        folder.mkdir(parents=True, exist_ok=True)
        written = []
        for index, (image, path) in enumerate(zip(images, targets, strict=True)):
            marked, watermarked = embed_image(image)
            manifest = {**make_manifest(self.provenance, controls, index, path.name), "watermark": watermarked,
                        **(notes[index] if notes else {})}
            write_png(path, marked, manifest)
            atomic_write_json(manifest_path(path), manifest)
            written.append(path)
        for name, picture in extras.items():
            path = folder / name
            marked, watermarked = embed_image(picture)
            manifest = {**make_manifest(self.provenance, controls, -1, name), "watermark": watermarked}
            write_png(path, marked, manifest)
            atomic_write_json(manifest_path(path), manifest)
            written.append(path)
        if gif is not None:
            from muselab.image.pictures import enlarged

            frames = [Image.fromarray(enlarged(image)) for image in images]
            frames += frames[-2:0:-1]  # there and back again
            atomic_write(gif, lambda tmp: frames[0].save(tmp, format="GIF", save_all=True,
                                                         append_images=frames[1:], duration=120, loop=0))
            atomic_write_json(manifest_path(gif), {**make_manifest(self.provenance, controls, -1, gif.name),
                                                   "watermark": False})
            written.append(gif)
        return written

    def write_audio(self, clips: Sequence[np.ndarray], sample_rate: int, controls: dict[str, Any],
                    notes: Sequence[dict[str, Any]] | None = None,
                    words: Sequence[list[dict[str, Any]] | None] | None = None) -> list[Path]:
        """WAV files (16-bit, watermarked, manifest inside and beside); `notes[i]` joins clip i's manifest;
        `words[i]` (spoken words with their times) is written beside clip i as `NAME.words.json`."""
        from muselab.safety.embed import write_wav
        from muselab.safety.watermark import embed_audio

        targets = self._targets(len(clips), "audio", ".wav")
        timed = [(i, path.with_suffix(".words.json"), w)
                 for i, (path, w) in enumerate(zip(targets, words or [], strict=False)) if w]
        self._check_free([*targets, *(side for _, side, _ in timed)])
        sides = []
        for index, side, spoken in timed:  # word timestamps, with a manifest of their own like every file
            atomic_write_json(side, {"words": spoken, "audio": targets[index].name})
            atomic_write_json(manifest_path(side), make_manifest(self.provenance, controls, index, side.name))
            sides.append(side)
        written = []
        for index, (clip, path) in enumerate(zip(clips, targets, strict=True)):
            marked = embed_audio(np.asarray(clip, dtype=np.float32), sample_rate)
            manifest = {**make_manifest(self.provenance, controls, index, path.name), "watermark": True,
                        "sample_rate": sample_rate, **(notes[index] if notes else {})}
            write_wav(path, marked, sample_rate, manifest)
            atomic_write_json(manifest_path(path), manifest)
            written.append(path)
        return written + sides


    def write_music(self, midi: Sequence[bytes], rolls: Sequence[np.ndarray], clips: Sequence[np.ndarray],
                    sample_rate: int, controls: dict[str, Any], notes: Sequence[dict[str, Any]] | None = None,
                    ) -> list[Path]:
        """Per piece a MIDI file (manifest in a meta event and beside it), its piano roll as PNG and, when
        it was rendered, its sound as WAV (both watermarked, manifest inside and beside); `notes[i]` joins
        piece i's manifests. NAME.mid, NAME.png and NAME.wav share a stem."""
        from muselab.safety.embed import write_midi, write_png, write_wav
        from muselab.safety.watermark import embed_audio, embed_image

        targets = self._targets(len(midi), "music", ".mid")
        pictures = [t.with_suffix(".png") for t in targets][: len(rolls)]
        sounds = [t.with_suffix(".wav") for t in targets][: len(clips)]
        self._check_free([*targets, *pictures, *sounds])
        targets[0].parent.mkdir(parents=True, exist_ok=True)
        written = []
        for index, path in enumerate(targets):
            extra = notes[index] if notes else {}
            manifest = {**make_manifest(self.provenance, controls, index, path.name), "watermark": False, **extra}
            write_midi(path, midi[index], manifest)
            atomic_write_json(manifest_path(path), manifest)
            written.append(path)
            if index < len(pictures):
                marked, watermarked = embed_image(rolls[index])
                picture = {**make_manifest(self.provenance, controls, index, pictures[index].name),
                           "watermark": watermarked, **extra}
                write_png(pictures[index], marked, picture)
                atomic_write_json(manifest_path(pictures[index]), picture)
                written.append(pictures[index])
            if index < len(sounds):
                marked = embed_audio(np.asarray(clips[index], dtype=np.float32), sample_rate)
                sound = {**make_manifest(self.provenance, controls, index, sounds[index].name), "watermark": True,
                         "sample_rate": sample_rate, **extra}
                write_wav(sounds[index], marked, sample_rate, sound)
                atomic_write_json(manifest_path(sounds[index]), sound)
                written.append(sounds[index])
        return written


def save_result(result: Result, path: Path, overwrite: bool) -> list[Path]:
    """Write a pipeline result: one file per item (a .tsv of lines for transductions), manifests with each
    item's notes (moderation, memorization), watermarks where the medium allows."""
    assert result.provenance is not None
    writer = ArtifactWriter(result.provenance, path, overwrite)
    file_note = {"refused": [r.to_json() for r in result.refused]} if result.refused else {}
    if isinstance(result, SequenceResult):
        from muselab.safety.guard import combine_notes

        # each item's own verdict where anything matched (a file of 6,000 clean words stays small)
        flagged = [{"index": index, "moderation": n["moderation"]}
                   for index, n in zip(result.input_indices, result.notes, strict=True)
                   if any(v for k, v in n.get("moderation", {}).items() if k != "policy")]
        note = {**combine_notes(result.notes), **({"items": flagged} if flagged else {}), **file_note}
        return writer.write_lines(result.lines(with_scores=result.controls.get("n_best", 1) > 1), result.controls,
                                  note)
    if isinstance(result, TextResult):
        from muselab.safety.guard import combine_notes

        return writer.write_texts(result.texts, result.controls, result.notes,
                                  {**combine_notes(result.notes), **file_note} if result.notes else file_note)
    if isinstance(result, ImageResult):
        return writer.write_images(result.arrays, result.controls, result.grid, result.animation, result.notes)
    if isinstance(result, AudioResult):
        words = [t.get("words") for t in result.timing] if result.timing else None
        return writer.write_audio(result.clips, result.sample_rate, result.controls, result.notes, words)
    if isinstance(result, MusicResult):
        return writer.write_music(result.midi, result.rolls, result.clips, result.sample_rate, result.controls,
                                  result.notes)
    raise TypeError(f"no writer for {type(result).__name__}")
