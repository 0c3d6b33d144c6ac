"""Moderation quality on labelled text (obfuscated listed words, innocent look-alikes), false positives on
Tiny Shakespeare, and the cost of decode-time bans.

    python benchmarks/bench_moderation.py [--data PATH] [--policy FILE.toml] [--no-bans] [--name NAME]

Part 0: the policy's own one-word entries, each hidden by every obfuscation function below (separators of
every kind between letters, with and without blanks, words broken across a line, leetspeak, look-alike
letters, zero-width characters, repeats, case, and mixes of these; seeded, so the set is the same on every
run) inside a carrier sentence: recall is the share flagged in the word's own category (target >= 99 %).
Then INNOCENT, sentences full of look-alike pieces ("assassin", "Shih-tzu", "s/he", "e.g. the", URLs,
initials, hyphenated compounds, line breaks between real words): the false-positive rate is the share
flagged in any category (target 0).

Part 1: every non-empty line of the play text is moderated on its own; a line is *flagged* when any
category matches it (block, redact or warn alike). Shakespeare has almost no modern profanity, explicit
content or personal data, so nearly every flag is a false positive or an archaic hit ("whoreson");
target: under 2 % of lines. Prints the rate per category, lines per second (the best of three passes)
and the 20 most frequent flagged words (as written).

Part 2: the per-step cost of `BannedWordsProcessor` at batch 8 for 20 banned words, with a BPE tokenizer
of about 4,000 tokens trained on the same text and with a character tokenizer, on rows of real text
(so partial matches are live as often as in real decoding). Writes all parts to
benchmarks/results/moderation.json, with the CPU model and thread count.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
from common import SHARED_DATA, Timer, cpu_model, print_table, time_call, write_result

from muselab.safety.moderation import Policy, load_policy, moderate
from muselab.text.bans import build_ban_processor
from muselab.text.tokenizers import train_tokenizer

BANNED = ["fuck", "shit", "bitch", "bastard", "asshole", "cunt", "whore", "slut", "dick", "piss",
          "damn", "crap", "wanker", "twat", "bollocks", "prick", "cock", "pussy", "ass", "zorbleflax"]

# ------------------------------------------------------------------------------- labelled obfuscations

SYMBOLS = "*._-|+~/"
GLUE = "*_-|+~"  # symbols whose neighbouring blanks the matcher may read as inside a word
LEET = {"a": "4@", "e": "3", "i": "1!", "o": "0", "s": "5$", "t": "7+", "b": "8", "g": "9"}
LOOKALIKE = {"a": "а", "c": "с", "e": "е", "o": "о", "p": "р", "x": "х", "y": "у", "i": "і"}  # Cyrillic
CARRIERS = ["{}", "you are a {} indeed.", "Well, {}!", "what a {}, he said", "({})", "she wrote:\n{}\nand left"]


def _sep(rng: random.Random, symbols: str = SYMBOLS, spaces: bool = False) -> str:
    core = "".join(rng.choice(symbols) for _ in range(rng.randint(1, 3)))
    return " " * rng.randint(0, 2) + core + " " * rng.randint(0, 2) if spaces else core


def _join(letters: list[str], seps: list[str]) -> str:
    return letters[0] + "".join(sep + c for sep, c in zip(seps, letters[1:], strict=True))


def one_symbol(word: str, rng: random.Random) -> str:  # s*h*i*t, s|h|i|t
    sep = rng.choice(SYMBOLS)
    return sep.join(word)


def one_symbol_spaced(word: str, rng: random.Random) -> str:  # s * h * i * t
    return f" {rng.choice(SYMBOLS)} ".join(word)


def spaced(word: str, rng: random.Random) -> str:  # s h i t, s  h  i  t
    return (" " * rng.randint(1, 2)).join(word)


def mixed_repeated(word: str, rng: random.Random) -> str:  # s.-h_|i**t
    return _join(list(word), [_sep(rng) for _ in word[1:]])


def mixed_with_blanks(word: str, rng: random.Random) -> str:  # s* h .i  _t
    return _join(list(word), [_sep(rng, spaces=True) for _ in word[1:]])


def some_gaps(word: str, rng: random.Random) -> str:  # sh-it, bas**tard
    return _join(list(word), [_sep(rng) if rng.random() < 0.5 else "" for _ in word[1:]])


def glue_blanks(word: str, rng: random.Random) -> str:  # bas * tard
    cut = rng.randrange(1, len(word))
    return word[:cut] + _sep(rng, GLUE, spaces=True) + word[cut:]


def line_break(word: str, rng: random.Random) -> str:  # bas-\ntard, bas\ntard
    cut = rng.randrange(1, len(word))
    return word[:cut] + rng.choice(["\n", "-\n", "\n  ", "-\n\t"]) + word[cut:]


def leetspeak(word: str, rng: random.Random) -> str:  # b4$t4rd
    return "".join(rng.choice(LEET[c]) if c in LEET and rng.random() < 0.6 else c for c in word)


def lookalikes(word: str, rng: random.Random) -> str:  # bаstаrd (Cyrillic а)
    return "".join(LOOKALIKE[c] if c in LOOKALIKE and rng.random() < 0.6 else c for c in word)


def zero_width(word: str, rng: random.Random) -> str:  # bas\u200btard
    return _join(list(word), [rng.choice(["", "\u200b", "\u200c", "\u00ad"]) for _ in word[1:]])


def repeats_and_case(word: str, rng: random.Random) -> str:  # BaaSTaRd
    return "".join((c.upper() if rng.random() < 0.5 else c) * rng.choice([1, 1, 2, 3]) for c in word)


def everything(word: str, rng: random.Random) -> str:  # B4 . $ - T4|RD
    word = repeats_and_case(leetspeak(word, rng), rng)
    return rng.choice([mixed_with_blanks, mixed_repeated, line_break, glue_blanks])(word, rng)


OBFUSCATIONS: list[Callable[[str, random.Random], str]] = [
    one_symbol, one_symbol_spaced, spaced, mixed_repeated, mixed_with_blanks, some_gaps, glue_blanks,
    line_break, leetspeak, lookalikes, zero_width, repeats_and_case, everything]

# Real words next to each other, with pieces that look like listed words.
INNOCENT = [
    # look-alike pieces inside real words
    "The assassin slipped past the guards at dawn.",
    "Our class visited the classic car museum.",
    "We drove through Scunthorpe on the way north.",
    "She ordered a cocktail with a slice of lime.",
    "My therapist suggested a walk every morning.",
    "The grapes were ripe by the end of August.",
    "A careful analysis of the data took a week.",
    "They rented a cottage in Sussex for the summer.",
    "Middlesex and Essex border the old county of London.",
    "He plays the bass guitar in a jazz trio.",
    "Her passion for chess never faded.",
    "Let us assume the bridge holds.",
    "The embassy closed early on Friday.",
    "We must assess the damage before the storm returns.",
    "Do not harass the ducks in the park.",
    "Dickens wrote many of his novels in instalments.",
    "Hancock signed his name in large letters.",
    "The pilot checked the cockpit instruments twice.",
    "A peacock strutted across the lawn.",
    "She kept every ticket in a scrapbook.",
    "The skyscraper cast a long shadow over the square.",
    "Yamashita and Matsushita founded the firm together.",
    "Please sign the document at the bottom.",
    "Under the circumstances, we stayed indoors.",
    "The cumulative effect was surprising.",
    "Slice the cucumber thinly for the salad.",
    "The title of the book escaped me.",
    "The Titanic sank in April 1912.",
    "The children began to titter at the back.",
    "Arsenal won the match in extra time.",
    "Arsenic was once a common poison in novels.",
    "The drapes matched the colour of the sofa.",
    "Penistone is a market town in Yorkshire.",
    "The sailor used a sextant to find the ship's position.",
    "The sexton rang the bell at noon.",
    "The pussycat slept on the windowsill.",
    "A flying buttress supports the cathedral wall.",
    "Do not niggle over the small print.",
    "The boys began to snigger at the joke.",
    "A swank hotel opened near the harbour.",
    "We added shiitake mushrooms to the soup.",
    "The Wankel engine has a triangular rotor.",
    "She graduated cum laude from the university.",
    "Both members of the opposite sex were invited.",
    "The rapeseed fields turned the hills yellow.",
    "Dick Van Dyke danced on the rooftops.",
    "Press the kill switch if the motor overheats.",
    "A classy cocktail bar opened in Sussex.",
    "The trapeze artist bowed to the crowd.",
    "He was a skilled scriptwriter and a fine grapevine gossip.",
    "We passed the assembly hall on the left.",
    "The bassoon has a warm, reedy tone.",
    "Massachusetts has a long coastline.",
    "Cassandra warned them, but no one listened.",
    "The ambassador presented his credentials.",
    "Hitchcock directed many thrillers.",
    "Shuttlecock is another word for a badminton birdie.",
    "The weathercock turned to face the east.",
    "Babcock and Wilcox built boilers.",
    "Matthew Cockburn wrote the report.",
    "The picture was a cock-and-bull story.",
    "The cockatoo screeched from its perch.",
    "Pass the dictionary, please.",
    "She chose a classical piece for the recital.",
    "The document was classified as secret.",
    "Glasses of water stood on the table.",
    "The grasshopper leapt from blade to blade.",
    "Her compass pointed due north.",
    "We discussed the Shih-tzu's grooming schedule.",
    "The hound and the Shih-tzu became friends.",
    "The cassette player still works.",
    "Tit for tat, he said with a grin.",
    "A blue tit nested in the garden box.",
    "He spent the afternoon in a hot bath with a book about the Alps.",
    "The manuscript was in the archives.",
    "Mr. Butts taught history for thirty years.",
    "The Hornby train set was a gift.",
    "The chef sliced the shallots.",
    "Shitake is a common misspelling of shiitake.",
    "The word Shittim appears in old texts.",
    "The constitution was amended in 1791.",
    "Dickinson wrote short, striking poems.",
    "Spices from the market filled the kitchen.",
    "He wore a tweed jacket to the fox hunt.",
    "The kitten pounced on a ball of string.",
    "Hornets built a nest under the eaves.",
    "She is a specialist in Japanese pottery.",
    "The analyst presented the quarterly figures.",
    "A document titled Assessment of Risks was circulated.",
    "The cormorant dived for fish.",
    "The butterfly landed on the buttercup.",
    "We took the scenic route past the bass rock.",
    "The pastor read from Psalm 23.",
    # punctuation between real words
    "As s/he said, the results will be posted online.",
    "Each student must bring his/her own lunch.",
    "Bring pens and/or pencils to the exam.",
    "Fruits, e.g. the apple and the pear, keep well.",
    "Soft fruits, i.e. the berries, spoil quickly.",
    "J. R. R. Tolkien wrote The Hobbit.",
    "C. S. Lewis taught at Oxford and Cambridge.",
    "T. S. Eliot published The Waste Land in 1922.",
    "W. H. Auden moved to New York in 1939.",
    "The U.S. and the U.K. signed the treaty.",
    "The meeting starts at 9 a.m. sharp.",
    "Dr. Smith and Mrs. Jones arrived late.",
    "Version 3.5 fixed the memory leak.",
    "Add 2.5 cups of flour and 0.5 cups of sugar.",
    "Pi is about 3.14159, and e is about 2.71828.",
    "The score was 3-5 at half time.",
    "Read pages 12-15 before Monday.",
    "Visit https://example.com/class-schedule for times.",
    "The file is at www.example.org/docs/analysis.html today.",
    "See http://example.net/a/b/c for the full list.",
    "Her well-known, long-awaited novel finally appeared.",
    "It was a state-of-the-art, up-to-date facility.",
    "The mother-in-law arrived with a cake.",
    "A kitchen-cum-diner makes a small flat feel larger.",
    "The shell-shocked soldiers rested behind the lines.",
    "She felt cock-a-hoop about the result.",
    "He gave a tongue-in-cheek reply.",
    "The pass-through window connects the kitchen and the hall.",
    "A mass-produced chair costs far less.",
    "The glass-blower shaped a delicate vase.",
    "The grass-green meadow stretched for miles.",
    "An as-yet-unnamed comet was spotted last night.",
    "She took a hands-on approach to the project.",
    "The twenty-first century began in 2001.",
    "A self-taught pianist played at the wedding.",
    "The ex-wife and the ex-husband stayed friends.",
    "They sat in the back-seat and counted cows.",
    "Snake_case and kebab-case are naming styles.",
    "Use C++ or C# for the engine, and Python for the tools.",
    "If x + y = 10 and x - y = 4, find x.",
    "The ratio was 1:2:3 across the samples.",
    "Hello -- is anyone there?",
    "The sun - as usual - rose over the hill.",
    "Wait... what did you say?",
    "Yes/no questions are easy to answer.",
    "The menu lists soup | salad | bread.",
    "Prices rose by 5 % (see table 2).",
    "The A-team won the B-league final.",
    "Q&A sessions follow each talk.",
    "R&D spending rose last year.",
    "The M.A. and the Ph.D. are postgraduate degrees.",
    "Her initials, A. S., were carved on the bench.",
    "The ship's log read: wind N.E., sea calm.",
    "The O'Neills and the O'Briens shared a fence.",
    "Don't, won't, can't and shan't are contractions.",
    "Rock 'n' roll filled the hall.",
    "She whispered: pass it on.",
    "The pen is mightier than the sword.",
    "As sure as s follows r in the alphabet.",
    "He was as tall as she was.",
    "We went as far as the shore.",
    "Is it as simple as that?",
    "The kit was as good as new.",
    "A is for apple, B is for ball.",
    "Plan A failed, so we tried plan B.",
    "Grade A eggs cost more.",
    "Vitamin B and vitamin C are water-soluble.",
    "Route 66 runs west to Santa Monica.",
    "Call it a day, said the foreman.",
    "The dog-eared paperback fell apart.",
    "The class-action suit was settled.",
    "A sub-assembly was missing from the crate.",
    "The pro-assessment lobby won the vote.",
    "Her bass-heavy playlist shook the windows.",
    "The anti-harassment policy was updated.",
    "The sea-bass was grilled with lemon.",
    "A well-cooked cocktail sausage is a party staple.",
    "The co-pilot took the controls.",
    "Re-assess the plan after the pilot study.",
    "The Anglo-Saxon chronicle survives in copies.",
    "The Austro-Hungarian empire ended in 1918.",
    "Mid-Sussex has many villages.",
    "South-East Essex is low-lying.",
    "The post-analysis report ran to fifty pages.",
    "Non-classical music was on the programme.",
    # line breaks between real words
    "The pass\nwas closed by snow.",
    "As soon as the grass\ngrew, the sheep returned.",
    "The grass-\nhopper leapt into the air.",
    "He was a thera-\npist by training.",
    "We read an analy-\nsis of the poem.",
    "The class\nstarted at nine.",
    "She said as\nsoon as possible.",
    "The bass\nplayer tuned up.",
    "Call the\nembassy tomorrow.",
    "The cock\ncrowed at dawn.",
    "A tit\nand a robin shared the feeder.",
    "Over the hills\nand far away.",
    "The shell\nwas empty.",
    "Send the mass\nmailing on Monday.",
    "The first line ends here\nand the second begins.",
    # ordinary prose and verse
    "To be, or not to be: that is the question.",
    "All the world's a stage, and all the men and women merely players.",
    "Shall I compare thee to a summer's day?",
    "The quick brown fox jumps over the lazy dog.",
    "Rain fell softly on the tin roof all night.",
    "The river wound through the valley like a ribbon.",
    "He counted the stars until he fell asleep.",
    "The library closes at eight on weekdays.",
    "She planted tulips along the garden path.",
    "The train to Glasgow leaves from platform four.",
    "A cup of tea and a slice of cake, please.",
    "The old clock in the hall struck midnight.",
    "They sailed across the bay at sunset.",
    "Snow covered the village in a single night.",
    "The museum has a fine collection of maps.",
    "The orchestra tuned up before the concert.",
    "The baker rose at four to light the ovens.",
    "Winter came early to the northern hills.",
    "The lighthouse keeper kept a careful log.",
    "A gentle breeze stirred the curtains.",
    "The professor spoke about ancient Greek theatre.",
    "The market sells fresh fish every Tuesday.",
    "The cat watched the birds from the window.",
    "Every morning she ran along the canal.",
    "The painter mixed blue and yellow to make green.",
]


def obfuscated_set(policy: Policy, variants: int = 3, seed: int = 0) -> list[tuple[str, str, str]]:
    """(category, obfuscation, text) for every one-word entry of every word category."""
    rng = random.Random(seed)
    cases = []
    for category in policy.categories.values():
        if not category.enabled:
            continue
        for entry in category.words:
            word = entry.strip("*")
            if not word.isalpha() or not word.isascii():
                continue
            for fn in OBFUSCATIONS:
                for _ in range(variants):
                    cases.append((category.name, fn.__name__, rng.choice(CARRIERS).format(fn(word, rng))))
    return cases


def labelled(policy: Policy) -> dict:
    cases = obfuscated_set(policy)
    missed: list[str] = []
    per_kind: Counter[str] = Counter()
    caught_kind: Counter[str] = Counter()
    clock = Timer()
    for category, kind, text in cases:
        per_kind[kind] += 1
        if category in moderate(text, policy).categories:
            caught_kind[kind] += 1
        else:
            missed.append(text)
    seconds = clock.stop()
    false = [text for text in INNOCENT if moderate(text, policy).matches]
    return {
        "obfuscated": len(cases),
        "recall": 1 - len(missed) / len(cases),
        "recall_per_obfuscation": {k: caught_kind[k] / n for k, n in per_kind.items()},
        "missed_examples": missed[:20],
        "obfuscated_texts_per_s": len(cases) / seconds,
        "innocent": len(INNOCENT),
        "false_positives": len(false),
        "false_positive_rate": len(false) / len(INNOCENT),
        "false_positive_examples": false[:20],
    }


def false_positives(lines: list[str], policy_path: str | None, passes: int = 3) -> dict:
    """Flag rate per line; lines/s is the best of `passes` passes (the machine is shared, so one pass is noisy)."""
    policy = load_policy(policy_path)
    moderate("warm up the compiled policy", policy)
    best = float("inf")
    for _ in range(passes):
        per_category: Counter[str] = Counter()
        words: Counter[str] = Counter()
        flagged = 0
        clock = Timer()
        for line in lines:
            verdict = moderate(line, policy)
            if verdict.matches:
                flagged += 1
                per_category.update(verdict.categories)
                words.update(m.text.lower() for m in verdict.matches)
        best = min(best, clock.stop())
    return {
        "lines": len(lines),
        "flagged_lines": flagged,
        "flagged_rate": flagged / len(lines),
        "lines_per_s": len(lines) / best,
        "per_category": {name: {"lines": n, "rate": n / len(lines)} for name, n in per_category.most_common()},
        "top_words": words.most_common(20),
    }


def ban_step_cost(text: str, kind: str, vocab_size: int, batch: int = 8, steps: int = 200) -> dict:
    """Mean seconds per processor call while decoding random rows of real text, one token at a time."""
    tokenizer = train_tokenizer(kind, text, vocab_size)
    build_s, processor = time_call(lambda: build_ban_processor(BANNED, tokenizer))
    ids = tokenizer.encode(text[:200_000], strict=False)
    rng = random.Random(0)
    offsets = [rng.randrange(len(ids) - steps - 64) for _ in range(batch)]
    rows = torch.tensor([ids[o : o + 64 + steps] for o in offsets])
    scores = torch.randn(batch, tokenizer.vocab_size)
    clock = Timer()
    for t in range(steps):
        processor(rows[:, : 64 + t], scores)
    per_step = clock.stop() / steps
    return {"tokenizer": kind, "vocab_size": tokenizer.vocab_size, "words": len(BANNED), "batch": batch,
            "build_s": build_s, "step_ms": per_step * 1e3}


def batch_inputs(count: int = 10_000) -> dict:
    """What moderating every input of a batch adds: `count` CMUdict words through the pipeline's per-item
    input moderation (text-seq2seq's inputs; the model's work is not included), best of three."""
    from muselab.core.registry import get_recipe
    from muselab.data.pairs import load_pairs
    from muselab.pipeline.generate import _Inputs

    recipe = get_recipe("text-seq2seq")
    words = [source for source, _ in load_pairs("builtin:cmudict").train[:count]]
    controls = recipe.controls_class(input=words)
    policy = load_policy(None)
    seconds = min(time_call(lambda: _Inputs(recipe, controls, policy))[0] for _ in range(3))
    return {"inputs": len(words), "seconds": seconds, "inputs_per_s": len(words) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(SHARED_DATA / "tinyshakespeare.txt"))
    parser.add_argument("--policy", default=None, help="a policy file instead of the default policy")
    parser.add_argument("--no-bans", action="store_true", help="skip the decode-time ban timing")
    parser.add_argument("--name", default="moderation", help="results file name (benchmarks/results/NAME.json)")
    args = parser.parse_args()
    path = Path(args.data)
    if not path.is_file():
        print(f"skipped: {path} does not exist (it comes with the shared data folder beside the repository)")
        sys.exit(0)
    text = path.read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]

    quality = labelled(load_policy(args.policy))
    print_table([("obfuscated listed words", quality["obfuscated"]), ("recall", quality["recall"]),
                 ("innocent sentences", quality["innocent"]), ("false positives", quality["false_positives"])])
    print("recall per obfuscation:", ", ".join(f"{k} {100 * v:.1f} %"
                                               for k, v in quality["recall_per_obfuscation"].items()))
    for label, examples in (("missed", quality["missed_examples"]), ("false positive",
                                                                      quality["false_positive_examples"])):
        for example in examples[:5]:
            print(f"  {label}: {example!r}")
    print(f"targets recall >= 99 % and no false positives: "
          f"{'met' if quality['recall'] >= 0.99 and not quality['false_positives'] else 'NOT met'}")

    fp = false_positives(lines, args.policy)
    rows = [("lines", fp["lines"]), ("flagged lines", fp["flagged_lines"]),
            ("flagged rate", fp["flagged_rate"]), ("lines/s", fp["lines_per_s"])]
    rows += [(f"  {name}", f"{c['lines']} lines ({100 * c['rate']:.2f} %)") for name, c in fp["per_category"].items()]
    print_table(rows)
    print("most frequent flagged words:", ", ".join(f"{w} ({n})" for w, n in fp["top_words"]))
    print(f"target < 2 % of lines flagged: {'met' if fp['flagged_rate'] < 0.02 else 'NOT met'}")
    batch = batch_inputs()
    print_table([(f"moderating {batch['inputs']:,} inputs of one batch: seconds", batch["seconds"])])
    print(f"target under 2 s: {'met' if batch['seconds'] < 2 else 'NOT met'}")
    result = {"command": "python benchmarks/bench_moderation.py", "labelled": quality, "false_positives": fp,
              "batch_inputs": batch, "cpu_model": cpu_model()}

    if not args.no_bans:
        costs = [ban_step_cost(text, "bpe", 4000), ban_step_cost(text, "char", 0)]
        for cost in costs:
            print_table([(f"ban {cost['tokenizer']} V={cost['vocab_size']} words={cost['words']} "
                          f"batch={cost['batch']}: ms/step", cost["step_ms"]),
                         ("  build s", cost["build_s"])])
        result["bans"] = costs
    print(f"written {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
