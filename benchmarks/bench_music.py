"""music-lm on builtin:bach: train the default preset under a budget, then compare with a random baseline
and with Bach.

    python benchmarks/bench_music.py [--minutes 15] [--set model.n_layer=6 ...]

From `muselab evaluate` (10 pieces of 8 bars in the keys of held-out chorales, and 10 held-out soprano
lines harmonised): the share of notes in the asked key and the pitch-class histogram distance to the
held-out chorales, each beside the key-matched random baseline (the same rhythms, pitches uniform in each
voice's range); held-out NLL per token and per note; parallel fifths/octaves per 100 chords of the
harmonisations beside Bach's own rate over all his chorales, measured by the same checker. The
harmonisations are made twice: with the voice-leading rule that music-lm applies while sampling (the
default, `avoid_parallels`) and without it, so the model's own voice leading is on record too. Then the
MIDI files written by `generate` are opened with music21 and pretty_midi.

Targets (issue 18): in-key share >= 0.90; PCH distance < half the random baseline's; parallels per 100
chords of the harmonisations <= 2x Bach's rate; every MIDI file opens in both libraries.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import budget_arguments, print_table, train_and_evaluate, write_result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    budget_arguments(parser, minutes=15.0, name="music")
    args = parser.parse_args()
    result, metrics, out, command = train_and_evaluate("music-lm", "builtin:bach", args, "bench_music.py")

    import music21
    import pretty_midi
    import torch

    from muselab import api
    from muselab.data.scores import load_bach
    from muselab.music.metrics import voice_leading_rates
    from muselab.music.recipe import _melody_plan

    run = api.load(out, device="cpu")
    cfg, spq = run.config, run.config.data.steps_per_quarter
    bach = voice_leading_rates(load_bach(), spq)
    # the same held-out soprano lines harmonised without the voice-leading rule
    test = run.recipe.prepare_data(cfg, "builtin:bach").assets["test"][: cfg.eval.harmonize]
    with torch.no_grad():
        free = run.recipe.compose_many(run.model, [_melody_plan(c, spq) for c in test], cfg, cfg.eval.seed + 1000,
                                       cfg.eval.temperature, cfg.eval.top_p, avoid_parallels=False)
    unconstrained = voice_leading_rates(free, spq)
    # MIDI files as users get them
    folder = Path(tempfile.mkdtemp(prefix="bench-music-midi-"))
    files = run.generate(seed=0, num_samples=3, bars=4, render=False).save(folder / "free")
    files += run.generate(melody="E4 E4 D4 C4 D4 E4 E4:2 D4:2", seed=0, render=False).save(folder / "harmonised")
    midi = [f for f in files if f.suffix == ".mid"]
    opened = sum(len(pretty_midi.PrettyMIDI(str(f)).instruments) > 0 and len(music21.converter.parse(str(f)).parts) > 0
                 for f in midi)

    gen, rnd, harm = metrics["generated"], metrics["random_baseline"], metrics["harmonized"]
    rows = [
        ("in-key share", gen["in_key_share"]), ("in-key share random", rnd["in_key_share"]),
        ("in-key share held-out Bach", metrics["held_out_bach"]["in_key_share"]),
        ("pch distance", gen["pch_distance"]), ("pch distance random", rnd["pch_distance"]),
        ("pch distance ratio", gen["pch_distance"] / rnd["pch_distance"]),
        ("duration distance", gen["duration_distance"]), ("duration distance random", rnd["duration_distance"]),
        ("generated parallels /100 chords", gen["parallels_per_100_chords"]),
        ("generated crossings /100 chords", gen["crossings_per_100_chords"]),
        ("generated out of range share", gen["out_of_range_share"]),
        ("generated longest copy (notes)", gen["longest_copy_notes"]),
        ("held-out Bach longest copy (notes)", metrics["held_out_bach"]["longest_copy_notes"]),
        ("random longest copy (notes)", rnd["longest_copy_notes"]),
        ("harmonised parallels /100 chords", harm["parallels_per_100_chords"]),
        ("harmonised parallels /100 chords, no rule", unconstrained["parallels_per_100_chords"]),
        ("Bach parallels /100 chords (all chorales)", bach["parallels_per_100_chords"]),
        ("harmonised / Bach parallels", harm["parallels_per_100_chords"] / max(1e-9, bach["parallels_per_100_chords"])),
        ("harmonised crossings /100 chords", harm["crossings_per_100_chords"]),
        ("harmonised crossings /100 chords, no rule", unconstrained["crossings_per_100_chords"]),
        ("Bach crossings /100 chords", bach["crossings_per_100_chords"]),
        ("harmonised in-key share", harm["in_key_share"]),
        ("harmonised chords", harm["chords"]),
        ("val nll per token", metrics["val_nll_per_token"]), ("random nll per token", metrics["random_nll_per_token"]),
        ("val nll per note", metrics["val_nll_per_note"]), ("random nll per note", metrics["random_nll_per_note"]),
        ("midi files opened by music21 and pretty_midi", f"{opened}/{len(midi)}"),
        ("targets", "in-key >= 0.90, pch ratio < 0.5, harmonised/Bach parallels <= 2, all MIDI open"),
        ("steps", result.step), ("minutes", result.elapsed_s / 60), ("val_loss", result.val_loss),
        ("run", str(out)), ("command", command),
    ]
    print_table(rows)
    print(f"written {write_result(args.name, dict(rows))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
