"""The intelligibility judge's floor: pocketsphinx's word error rate on flite's own recordings of the held-out
sentences of builtin:speech, per voice.

    python benchmarks/bench_speech_recognizer.py [--sentences 45] [--examples 3]

audio-tts is judged by the same recogniser on its speech (issue 16: WER at most 0.25); this is how well the
recogniser understands the recordings the model learns from, every held-out sentence in every voice (the
TTS evaluation speaks each sentence in one voice, the voices taking turns). The text is normalised as the
evaluation does it (numbers spelled out, pauses dropped).
"""

from __future__ import annotations

import argparse

from common import Timer, print_table, write_result

from muselab.audio.io import load_audio
from muselab.audio.tts_recipe import Recognizer, spoken_words
from muselab.core.sequences import edit_distance
from muselab.data.speech import SPEECH_SAMPLE_RATE, SPEECH_VOICES, flite_utterance, held_out_sentences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=45, help="held-out sentences, in their fixed order")
    parser.add_argument("--examples", type=int, default=3, help="transcripts kept per voice in the result")
    parser.add_argument("--name", default="speech_recognizer_floor")
    args = parser.parse_args()

    sentences = held_out_sentences()[: args.sentences]
    recognizer, timer = Recognizer(), Timer()
    per_voice: dict[str, dict] = {}
    for voice in SPEECH_VOICES:
        errors = words = 0
        examples = []
        for sentence in sentences:
            audio, _, _ = load_audio(flite_utterance(sentence, voice).path, sr=SPEECH_SAMPLE_RATE, min_seconds=0.0)
            truth = spoken_words(sentence)
            heard = recognizer.transcribe(audio, SPEECH_SAMPLE_RATE).split()
            errors += edit_distance(truth, heard)
            words += len(truth)
            if len(examples) < args.examples:
                examples.append({"text": " ".join(truth), "heard": " ".join(heard)})
        per_voice[voice] = {"wer": errors / words, "word_errors": errors, "words": words, "examples": examples}
    overall = sum(v["word_errors"] for v in per_voice.values()) / sum(v["words"] for v in per_voice.values())
    rows = [(f"WER on flite's {voice}", v["wer"]) for voice, v in per_voice.items()]
    rows += [("WER, all voices", overall), ("sentences", len(sentences)), ("seconds", timer.stop())]
    print_table(rows)
    command = f"python benchmarks/bench_speech_recognizer.py --sentences {args.sentences}"
    path = write_result(args.name, {"command": command, "recognizer": "pocketsphinx (default US English model)",
                                    "sentences": len(sentences), "wer_all_voices": overall, "voices": per_voice})
    print(f"written {path}")


if __name__ == "__main__":
    main()
