"""The rules a generated piece is sampled under, as one logits processor of the shared sampling chain.

`ScoreTemplateProcessor` walks a `Template`: a fixed position (BOS, a bar line, the key, a pinned melody
note, EOS) allows its token alone; a free position allows its voice's tokens, HOLD only while the voice
sounds, and (with `avoid_parallels`) no note that would move in parallel fifths or octaves, from the last
chord, with a voice already written at this step. Because the template fixes the layout, every sample decodes to a
well-formed piece of exactly the asked length.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from muselab.music.encoding import (
    FREE,
    HIGH,
    LOW,
    N_VOICES,
    VOCAB_SIZE,
    Template,
    hold_token,
    note_token,
    pitch_of,
    rest_token,
    voice_tokens,
)
from muselab.sampling import LogitsProcessor

_NEG_INF = float("-inf")
_PITCHES = np.arange(LOW, HIGH + 1)


def parallel_pitches(prev_v: int, prev_u: int, cur_u: int) -> np.ndarray:
    """Pitches voice v may not move to when voice u went prev_u -> cur_u and v sounded prev_v: those making
    the same perfect fifth or octave (unison) again with both voices moving the same way."""
    if min(prev_v, prev_u, cur_u) < 0 or cur_u == prev_u:
        return _PITCHES[:0]
    interval = abs(prev_v - prev_u) % 12
    if interval not in (0, 7):
        return _PITCHES[:0]
    direction = np.sign(cur_u - prev_u)
    banned = (np.abs(_PITCHES - cur_u) % 12 == interval) & (np.sign(_PITCHES - prev_v) == direction)
    return _PITCHES[banned]


class ScoreTemplateProcessor(LogitsProcessor):
    """Masks next-token scores to what the template and the voice-leading rules allow (see the module)."""

    def __init__(self, template: Template | Sequence[Template], avoid_parallels: bool = True) -> None:
        """One template for every row, or one per row (all of one layout: only fixed tokens may differ)."""
        templates = [template] if isinstance(template, Template) else list(template)
        if any(t.voices != templates[0].voices for t in templates):
            raise ValueError("the templates of one batch must share their layout")
        self.template, self.avoid_parallels = templates[0], avoid_parallels
        self.fixed = torch.tensor([t.tokens for t in templates])  # [1 or B, L]
        self.voice_masks = torch.zeros(N_VOICES, VOCAB_SIZE, dtype=torch.bool)
        for v in range(N_VOICES):
            self.voice_masks[v, list(voice_tokens(v))] = True
        self._rows = -1
        self._seen = 0

    def _reset(self, rows: int) -> None:
        self._rows, self._seen = rows, 0
        self.sound = np.full((rows, N_VOICES), -1)  # the pitch each voice sounds (after the tokens seen)
        self.struck = np.zeros(rows, dtype=bool)  # whether a note started in the current step
        # the last chord: the pitches of the last step where a note started and all four voices sounded
        # (the chord before the current one, as the checker in `music.metrics` reads a piece)
        self.before = np.full((rows, N_VOICES), -1)

    def _follow(self, input_ids: torch.Tensor) -> None:
        rows, length = input_ids.shape
        if rows != self._rows or length < self._seen:
            self._reset(rows)
        new = input_ids[:, self._seen:].tolist()
        for offset in range(length - self._seen):
            position = self._seen + offset
            v = self.template.voices[position] if position < len(self.template) else -1
            if v < 0:
                continue
            if v == 0:
                self.struck[:] = False
            for row in range(rows):
                token = new[row][offset]
                pitch = pitch_of(token)
                if pitch is not None:
                    self.sound[row, v] = pitch
                    self.struck[row] = True
                elif token == rest_token(v):
                    self.sound[row, v] = -1
            if v == N_VOICES - 1:
                chord = self.struck & (self.sound >= 0).all(1)
                self.before[chord] = self.sound[chord]
        self._seen = length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self._follow(input_ids)
        position = input_ids.shape[1]
        allowed = torch.zeros_like(scores, dtype=torch.bool)
        position = min(position, len(self.template) - 1)
        v = self.template.voices[position]
        fixed = self.fixed[:, position].to(scores.device).expand(scores.shape[0])
        if v < 0 or bool((fixed != FREE).all()):
            allowed.scatter_(1, fixed[:, None], True)
            return scores.masked_fill(~allowed, _NEG_INF)
        allowed[:] = self.voice_masks[v].to(scores.device)
        pinned = (fixed != FREE).tolist()
        for row in range(scores.shape[0]):
            if pinned[row]:
                allowed[row] = False
                allowed[row, int(fixed[row])] = True
                continue
            if self.sound[row, v] < 0:  # nothing sounds that could be held
                allowed[row, hold_token(v)] = False
            if self.avoid_parallels and v > 0:
                for u in range(v):
                    for pitch in parallel_pitches(self.before[row, v], self.before[row, u], self.sound[row, u]):
                        allowed[row, note_token(v, int(pitch))] = False
        return scores.masked_fill(~allowed, _NEG_INF)
