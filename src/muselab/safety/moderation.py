"""Text moderation: a reviewable policy of word lists and patterns, matched through obfuscation.

A policy has categories; each holds words/phrases and/or regex patterns and an action:
- `block`: the text is refused (`Verdict.allowed` is False, `enforce` raises PolicyViolation);
- `redact`: the matched span is masked in place and the text goes on;
- `warn`: the text goes on unchanged and the verdict carries a warning.

Shipped defaults (`default_policy.toml`), chosen so that the cost of a mistake matches the action:
profanity -> redact (a swear word in a sample should not sink the whole output, and a false hit only
masks one word); sexual -> block (explicit content is out of scope for a general tool and masking one
word would leave the rest of the explicit text); violence -> warn (fiction is full of violence, so a
refusal would mostly hit innocent text; threats and self-harm get flagged for a person to look at);
personal_data -> redact (e-mail addresses, phone and card numbers are removed but the text stays
usable). Users change any of this with a policy file (`load_policy`).

Matching works on a *skeleton* of the text: zero-width characters (ZWSP, ZWNJ, ZWJ, word joiner, soft
hyphen, BOM, ...) are dropped, each character is NFKC-normalised (fullwidth and mathematical letters),
case-folded, stripped of accents and mapped through a table of Cyrillic, Greek and small-capital
look-alikes. Every skeleton character remembers the original characters it came from, so a match is
reported and redacted at its original offsets. Each category's words are compiled into one regex (a
trie of per-letter pieces, so shared prefixes are tried once) in which a letter also accepts its
leetspeak forms (4 @ for a, 3 for e, 1 ! | for i, 0 for o, 5 $ for s, 7 + for t, ...; * for a vowel),
a run of one letter matches any longer run ("baaad" is "bad", but "as" is not "ass"), and separators
may stand between letters (see `_SEP`): up to four symbols of any kind ("b.a.d", "b*|*a-d", "sh--it"),
one line break ("bas-\\ntard", "bas\\ntard"), and blanks only beside a symbol prose does not put at the
edge of a word ("bas * tard"). Lookarounds make every word whole: "ass" never matches "class",
"assassin" or "bass", "cunt" never "Scunthorpe"; real words joined by punctuation still have to spell a
listed word exactly ("Shih-tzu", "s/he", "e.g." pass). A plain blank is where prose separates words,
so it never joins pieces of two or more letters ("as sure as s"); letters spelled out across blanks
("b a d", "s * h * i * t", "s.h. i.t", chunks in which no two different letters touch) are found by a second pass
that removes the blanks of such runs and searches them without word boundaries. Patterns (personal
data) run on the NFKC text with zero-width characters removed.

Redaction masks: a word is replaced by as many `*` as it has non-blank characters (the layout stays);
a pattern match by `[name]` (`[email]`, `[phone]`, `[card]`), which keeps the sentence readable and
says what was removed.

Known limits: a word list cannot understand context ("I will kill you" in a play is flagged like a
real threat; words with an innocent sense are therefore left out of the shipped lists); spelled-out
innocent words that contain a listed word ("c l a s s") are flagged by the spelled-out pass, and so
are real words that punctuation joins into a listed word exactly ("as-s", "mass-acre").
"""

from __future__ import annotations

import bisect
import re
import tomllib
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints, ValidationError

from muselab.core.config import Section
from muselab.core.errors import ConfigError, DataError, MuselabError

__all__ = [
    "Action",
    "Category",
    "Match",
    "PatternRule",
    "Policy",
    "PolicyViolation",
    "Verdict",
    "default_policy",
    "enforce",
    "load_policy",
    "moderate",
    "moderate_command",
    "raise_if_blocked",
    "skeleton",
]

Action = Literal["block", "redact", "warn"]
DEFAULT_POLICY_FILE = "default_policy.toml"


class PolicyViolation(MuselabError):
    """A text matched a category whose action is `block`."""


# ---------------------------------------------------------------------------------------- normalisation

# Invisible characters people slip inside words; they are dropped before matching.
ZERO_WIDTH = frozenset("\u200b\u200c\u200d\u2060\u2061\u2062\u2063\u2064\u00ad\ufeff\u180e\u200e\u200f")

# Letters that look like Latin ones, by the letter they imitate. Capitals (and final sigma) are looked
# up before case folding, because folding loses what they resemble: capital eta looks like H, small
# eta like n.
_LOOKALIKES_BEFORE_FOLD = {ch: latin for latin, chars in {
    "a": "АΑ", "b": "ВΒ", "c": "Сς", "e": "ЕΕ", "h": "НΗ", "i": "ІΙ", "j": "Ј", "k": "КΚ", "m": "МΜ",
    "n": "Ν", "o": "ОΟ", "p": "РΡ", "s": "Ѕ", "t": "ТΤ", "x": "ХΧ", "y": "УΥ", "z": "Ζ",
}.items() for ch in chars}
_LOOKALIKES = {ch: latin for latin, chars in {
    "a": "аαᴀ", "b": "вβƀʙъь", "c": "сᴄ", "d": "ԁđᴅ", "e": "еεᴇ", "g": "ɡɢ", "h": "һнħʜ",
    "i": "іιıɨɪ", "j": "јᴊ", "k": "кκᴋ", "l": "ӏłʟ", "m": "мᴍ", "n": "ηπпɴ", "o": "оοσøᴏ", "p": "рρᴘ",
    "q": "ԛ", "r": "гʀ", "s": "ѕꜱ", "t": "тτŧᴛ", "u": "υμᴜ", "v": "νᴠ", "w": "шщԝωᴡ", "x": "хχ",
    "y": "уүγʏ", "z": "ζᴢ",
}.items() for ch in chars}

# What each letter may be written as in leetspeak; `*` often stands for a vowel ("f*ck").
_LEET = {"a": "4@*", "b": "8", "e": "3*", "g": "9", "i": "1!|*", "l": "1|", "o": "0*", "s": "5$",
         "t": "7+", "u": "*"}
_WORD = r"[^\W_]"  # a letter or digit of any script
_START = rf"(?<!{_WORD})"
_END = rf"(?!{_WORD})"
_SYMBOL = r"(?:[^\w\s]|_)"  # punctuation or a symbol: neither a letter, a digit nor a blank
# Symbols prose does not put at the edge of a word; blanks beside them may stand inside one ("bas * tard").
_GLUE = r"[*_~|+=^#\\-]"
# What may stand between the letters of one word: up to four symbols ("b.a.d", "b*|*a", "b--__a"), blanks
# only where they touch a glue symbol, and one line break ("bas-\ntard", "bas\ntard"). A plain blank is
# where prose separates words, so it never joins multi-letter pieces ("as sure as s", "pen is").
_SEP = (rf"(?:(?=[\W_])(?:[ \t]{{1,3}}(?={_GLUE}))?{_SYMBOL}{{0,4}}"
        rf"(?:(?<={_GLUE})[ \t]{{1,3}}|[ \t]{{0,3}}\r?\n[ \t]{{0,3}})?)?")
_GAP = r"[\W_]{0,3}"  # what may stand between the words of a phrase
_PLURAL_S = r"(?:[s5$])?"  # plural of most words: only "s", so "spic" does not match "spices"
_PLURAL_ES = r"(?:[e3]?[s5$])?"  # after s, x, z, ch, sh: "asses", "bitches", but not "assess"
_TAIL = rf"{_WORD}*"  # `word*`: any continuation
_HEAD = rf"{_WORD}*?"  # `*word`: any beginning
_LEET_SYMBOLS = "@$!|+"  # leetspeak forms that are not letters or digits
# Spelled-out letters: two or more blank-separated chunks in which no two different letters touch ("b a d",
# "s * h * i * t", "s.h. i.t", "b a\nd"); a chunk of symbols alone ("*", "--") also counts. Such a run
# cannot be a sequence of real words (a word has two letters in a row, bar "a" and "I"), so its blanks
# are removed and it is searched without word boundaries ("what a b a d" runs "a" into "bad").
_BLANKS = r"(?:[ \t]{1,4}|[ \t]{0,4}\r?\n[ \t]{0,4})"
_SPELLED = re.compile(  # a letter may repeat ("ss h i t"): group 1 and 2 are the last letters of the chunks
    rf"(?<!\S)(?:({_WORD})\1*(?!{_WORD})|{_SYMBOL})+(?:{_BLANKS}(?:({_WORD})\2*(?!{_WORD})|{_SYMBOL})+)+(?!\S)")
_WORDLIKE = re.compile(rf"[^\W\d_]|[{re.escape(_LEET_SYMBOLS)}*]")  # "455" is a number, not a word


@lru_cache(maxsize=8192)
def _fold_char(c: str) -> str:
    """The skeleton of one character: '' for invisible ones and bare combining marks."""
    if c in ZERO_WIDTH:
        return ""
    out = []
    for ch in unicodedata.normalize("NFKC", c):
        mapped = _LOOKALIKES_BEFORE_FOLD.get(ch)
        if mapped:
            out.append(mapped)
            continue
        for part in unicodedata.normalize("NFKD", ch.casefold()):
            if not unicodedata.combining(part):
                out.append(_LOOKALIKES.get(part, part))
    return "".join(out)


@lru_cache(maxsize=8192)
def _plain_char(c: str) -> str:
    """What patterns see: NFKC (fullwidth digits become ASCII), invisible characters removed."""
    return "" if c in ZERO_WIDTH else unicodedata.normalize("NFKC", c)


@dataclass(frozen=True)
class _View:
    """A string derived from an original text; character k came from original[starts[k]:ends[k]]."""

    text: str
    starts: list[int]
    ends: list[int]

    def span(self, start: int, end: int) -> tuple[int, int]:
        """Original offsets of view characters [start, end)."""
        return self.starts[start], self.ends[end - 1]


def _view(text: str, fold: Callable[[str], str], ascii_fold: Callable[[str], str]) -> _View:
    if text.isascii():
        return _View(ascii_fold(text), list(range(len(text))), list(range(1, len(text) + 1)))
    chars: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    for i, c in enumerate(text):
        out = fold(c)
        if out:
            chars.append(out)
            starts.extend([i] * len(out))
            ends.extend([i + 1] * len(out))
        elif ends and ends[-1] == i:
            # A dropped character (invisible, or an accent) joins the kept one before it, so a masked
            # word takes its accents and hidden characters with it.
            ends[-1] = i + 1
    return _View("".join(chars), starts, ends)


def skeleton(text: str) -> str:
    """The normalised form matching runs on (lower case, no accents, look-alikes and invisibles mapped)."""
    return _view(text, _fold_char, str.lower).text


def _plain(text: str) -> _View:
    return _view(text, _plain_char, lambda s: s)


# --------------------------------------------------------------------------------- words into regexes

def _letter_class(ch: str) -> str:
    forms = ch + _LEET.get(ch, "")
    return re.escape(ch) if len(forms) == 1 else "[" + re.escape(forms) + "]"


def _run_piece(ch: str, count: int) -> str:
    """`count` copies of a letter, each allowed separators before it, then any more of the same letter."""
    cls = _letter_class(ch)
    return cls + f"(?:{_SEP}{cls})" * (count - 1) + f"(?:{_SEP}{cls})*"


def _entry_pieces(entry: str) -> list[str]:
    """The regex pieces of one list entry, already in skeleton form (see `_parse_entry`)."""
    pieces = [_HEAD] if entry.startswith("*") else []
    words = [w for w in re.split(r"[\W_]+", entry.strip("*")) if w]
    for w_index, word in enumerate(words):
        if w_index:
            pieces.append(_GAP)
        runs = [(m.group()[0], len(m.group())) for m in re.finditer(r"(.)\1*", word)]
        for r_index, (ch, count) in enumerate(runs):
            if r_index:
                pieces.append(_SEP)
            pieces.append(_run_piece(ch, count))
    if entry.endswith("*"):
        pieces.append(_TAIL)
    else:
        pieces.append(_PLURAL_ES if entry.endswith(("s", "x", "z", "ch", "sh")) else _PLURAL_S)
    return pieces


def _trie_regex(entries: Iterable[str]) -> str:
    """One alternation for many entries, as a trie: entries sharing a prefix share its regex once."""
    root: dict[str, dict] = {}
    for entry in entries:
        node = root
        for piece in _entry_pieces(entry):
            node = node.setdefault(piece, {})
        node[""] = {}

    def emit(node: dict[str, dict]) -> str:
        # A continuation (`word*`) is tried before the plural, so a match covers the whole word.
        alts = [piece + emit(child) for piece, child in sorted(node.items(), key=lambda kv: kv[0] != _TAIL)]
        return alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"

    return emit(root)


def _parse_entry(raw: str, where: str) -> str:
    """Check a list entry and bring it to skeleton form; `*` may only open or close it."""
    if not isinstance(raw, str) or not raw.strip():
        raise ConfigError(f"empty word in {where}; remove it")
    entry = " ".join(skeleton(raw).split())
    core = entry.strip("*")
    if "*" in core:
        raise ConfigError(f"bad word {raw!r} in {where}: '*' may only start or end an entry (word*, *word*)")
    if not re.search(r"[^\W\d_]", core):
        raise ConfigError(f"bad word {raw!r} in {where}: it has no letters")
    return entry


# ------------------------------------------------------------------------------------- policy schema

_Name = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]*$")]


class PatternRule(Section):
    """A regex for things a word list cannot hold (e-mail addresses, phone numbers)."""

    name: _Name = Field(description="shown in matches; a redaction reads [name]")
    regex: str = Field(min_length=1, description="Python regex, run on the NFKC text")
    check: Literal["luhn", "phone"] | None = Field(
        None, description="luhn: the digits must pass the card checksum; phone: 8 to 15 digits (E.164)")


class CategoryFile(Section):
    """One category as a policy file writes it; every field is optional when it edits a known category."""

    action: Action | None = Field(None, description="block, redact or warn")
    enabled: bool | None = Field(None, description="false turns the category off")
    words: list[str] | None = Field(None, description="replaces the whole word list")
    add_words: list[str] = Field([], description="words added to the list")
    remove_words: list[str] = Field([], description="words taken out of the list")
    patterns: list[PatternRule] | None = Field(None, description="replaces all patterns")
    add_patterns: list[PatternRule] = Field([], description="patterns added")
    remove_patterns: list[str] = Field([], description="names of patterns taken out")


class InputsFile(Section):
    """How inputs are moderated: "recipe" keeps each recipe's default (prompts that steer free generation
    are blocked or masked; text a model transforms, such as a word to pronounce, is only recorded)."""

    action: Literal["recipe", "block", "warn"] = Field(
        "recipe", description="block: every input as the categories say; warn: inputs are only recorded")


class PolicyFile(Section):
    """A policy file: edits to the default policy, or (extends = "none") a whole policy."""

    inputs: InputsFile = Field(InputsFile(), description="how inputs (prompts, words, texts) are moderated")

    extends: Literal["default", "none"] = Field("default", description="start from the shipped policy or none")
    allow: list[str] = Field([], description="phrases never flagged, even with a listed word inside")
    remove_allow: list[str] = Field([], description="allowed phrases taken out")
    categories: dict[_Name, CategoryFile] = Field({}, description="categories, by name")


@dataclass(frozen=True)
class Category:
    """A resolved category: what it matches and what happens then."""

    name: str
    action: Action
    words: tuple[str, ...] = ()
    patterns: tuple[PatternRule, ...] = ()
    enabled: bool = True


@dataclass(frozen=True)
class _Compiled:
    category: Category
    entries: tuple[str, ...]  # skeleton forms of the words
    body: str | None  # the words' trie regex, without word boundaries
    bounded: re.Pattern[str] | None  # whole words, on the skeleton
    patterns: tuple[tuple[PatternRule, re.Pattern[str]], ...]
    _singles: dict[tuple[str, bool], re.Pattern[str]] = field(default_factory=dict)
    _bare: list[re.Pattern[str]] = field(default_factory=list)

    def bare(self) -> re.Pattern[str] | None:
        """The words without boundaries, for joined runs of spaced letters; compiled on first need."""
        if self.body is None:
            return None
        if not self._bare:
            self._bare.append(re.compile(self.body))
        return self._bare[0]

    def rule_of(self, matched: str, spaced: bool) -> str:
        """The list entry that matched (for reports); entries are tried one by one only on hits."""
        for raw, entry in zip(self.category.words, self.entries, strict=True):
            key = (entry, spaced)
            regex = self._singles.get(key)
            if regex is None:
                body = _trie_regex([entry])
                regex = self._singles[key] = re.compile(body if spaced else _START + body + _END)
            if regex.fullmatch(matched):
                return raw
        return matched


class Policy:
    """Categories and allowed phrases, compiled once; build one with `load_policy`."""

    def __init__(self, categories: Iterable[Category], allow: Sequence[str] = (), source: str = "policy",
                 inputs_action: str | None = None) -> None:
        self.source = source
        self.inputs_action = inputs_action  # None: each recipe's default (see InputsFile)
        self.categories: Mapping[str, Category] = MappingProxyType({c.name: c for c in categories})
        self.allow: tuple[str, ...] = tuple(allow)
        allow_entries = [_parse_entry(a, f"'allow' of {source}").strip("*") for a in self.allow]
        self._allow = re.compile(_START + _trie_regex(allow_entries) + _END) if allow_entries else None
        self._compiled = tuple(self._compile(c) for c in self.categories.values() if c.enabled)

    def _compile(self, category: Category) -> _Compiled:
        where = f"category '{category.name}' of {self.source}"
        entries = tuple(_parse_entry(w, where) for w in category.words)
        body = _trie_regex(entries) if entries else None
        patterns = []
        for rule in category.patterns:
            try:
                patterns.append((rule, re.compile(rule.regex)))
            except re.error as err:
                raise ConfigError(f"pattern '{rule.name}' in {where} is not a valid regex ({err}); fix it") from None
        bounded = re.compile(_START + body + _END) if body else None
        return _Compiled(category, entries, body, bounded, tuple(patterns))

    def __repr__(self) -> str:
        summary = ", ".join(f"{c.name}={c.action}" for c in self.categories.values() if c.enabled)
        return f"Policy({summary}; from {self.source})"


def _schema_error(err: ValidationError, source: str) -> ConfigError:
    errors = err.errors()
    # A misspelt key also shows up as the missing right one; naming the misspelling helps more.
    first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    path = [str(p) for p in first["loc"] if p != "[key]"]  # pydantic marks a bad dict key with "[key]"
    key = ".".join(path)
    if first["type"] == "extra_forbidden":
        parent = path[:-1]
        model: type[BaseModel] = PolicyFile
        if len(parent) == 2:
            model = CategoryFile
        elif len(parent) == 4:
            model = PatternRule
        allowed = ", ".join(model.model_fields)
        return ConfigError(f"unknown key '{key}' in {source}; keys allowed there: {allowed}")
    if first["type"] == "missing":
        return ConfigError(f"missing key '{key}' in {source}; add it")
    value = first.get("input")
    msg = first["msg"][0].lower() + first["msg"][1:]
    if first["type"] == "string_pattern_mismatch":
        msg = "names are lower-case letters, digits and _, starting with a letter"
    return ConfigError(f"bad value for '{key}' in {source}: {value!r} ({msg})")


def _edit(current: list[Any], replace: list[Any] | None, add: list[Any], remove: list[str],
          key: Any, what: str, where: str) -> list[Any]:
    items = list(replace) if replace is not None else list(current)
    for item in add:
        if key(item) not in {key(x) for x in items}:
            items.append(item)
    for name in remove:
        if name not in {key(x) for x in items}:
            raise ConfigError(f"cannot remove {what} {name!r} from {where}: it is not there")
        items = [x for x in items if key(x) != name]
    return items


def _resolve(spec: PolicyFile, base: Policy | None, source: str) -> Policy:
    categories = dict(base.categories) if base is not None else {}
    for name, edit in spec.categories.items():
        old = categories.get(name)
        where = f"category '{name}' of {source}"
        if old is None and edit.action is None:
            raise ConfigError(f"{where} is new: give it an action (block, redact or warn)")
        word_key = lambda w: " ".join(str(w).casefold().split())  # noqa: E731
        words = _edit(list(old.words) if old else [], edit.words, edit.add_words,
                      [word_key(w) for w in edit.remove_words], word_key, "word", where)
        patterns = _edit(list(old.patterns) if old else [], edit.patterns, edit.add_patterns,
                         edit.remove_patterns, lambda p: p.name, "pattern", where)
        enabled = edit.enabled if edit.enabled is not None else (old.enabled if old else True)
        if enabled and not words and not patterns:
            raise ConfigError(f"{where} has no words or patterns; add some or set enabled = false")
        categories[name] = Category(name, edit.action or old.action, tuple(words), tuple(patterns), enabled)
    allow = _edit(list(base.allow) if base is not None else [], None, spec.allow, spec.remove_allow,
                  lambda a: a, "allowed phrase", source)
    inputs_action = spec.inputs.action if spec.inputs.action != "recipe" else (base.inputs_action if base else None)
    return Policy(categories.values(), allow, source, inputs_action)


def _read_policy_file(path: Path, source: str) -> PolicyFile:
    try:
        with path.open("rb") as handle:
            raw = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{source} does not exist; pass the path of a TOML policy file") from None
    except IsADirectoryError:
        raise ConfigError(f"{source} is a folder; pass the path of a TOML policy file") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{source} is not valid TOML: {err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{source} is not UTF-8 text; save it as UTF-8") from None
    try:
        return PolicyFile.model_validate(raw)
    except ValidationError as err:
        raise _schema_error(err, source) from None


@cache
def default_policy() -> Policy:
    """The shipped policy (`default_policy.toml` beside this module), compiled once per process."""
    with resources.as_file(resources.files(__package__) / DEFAULT_POLICY_FILE) as path:
        spec = _read_policy_file(Path(path), "the default policy")
    return _resolve(spec, None, "the default policy")


def load_policy(path: str | Path | None = None) -> Policy:
    """The default policy (path None), or a TOML policy file applied on top of it (or alone)."""
    if path is None:
        return default_policy()
    path = Path(path)
    source = f"policy file '{path}'"
    spec = _read_policy_file(path, source)
    return _resolve(spec, default_policy() if spec.extends == "default" else None, source)


# ------------------------------------------------------------------------------------------ matching

class Match(BaseModel):
    """One flagged span of the original text."""

    category: str
    action: Action
    rule: str = Field(description="the list entry or pattern name that matched")
    text: str = Field(description="the original characters matched")
    start: int = Field(description="offset of the first character in the original text")
    end: int = Field(description="offset just past the last character")
    line: int = Field(description="1-based line of the first character")


class Verdict(BaseModel):
    """What moderation decided about one text."""

    allowed: bool = Field(description="False when a block-action category matched")
    categories: list[str] = Field(description="categories that matched, in order of first match")
    matches: list[Match]
    redacted: str = Field(description="the text with redact-action matches masked in place")
    warnings: list[str]

    def to_json(self) -> str:
        return self.model_dump_json()


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d) * (2 if i % 2 else 1)
        total += n - 9 if n > 9 else n
    return total % 10 == 0


def _passes(check: str | None, matched: str) -> bool:
    digits = "".join(c for c in matched if c.isdigit())
    if check == "luhn":
        return 13 <= len(digits) <= 19 and _luhn(digits)
    if check == "phone":
        return 8 <= len(digits) <= 15
    return True


@dataclass(frozen=True)
class _Spelled:
    joined: str  # the spelled-out runs with their blanks removed, joined by _RUN_FILL
    positions: list[int]  # skeleton offset of each character (-1 for the filler)


_RUN_FILL = "\n" * 4  # no word, phrase gap or separator crosses it


def _spelled_runs(text: str) -> _Spelled | None:
    """All spelled-out runs of the text in one string, so that each category searches them in one call."""
    parts: list[str] = []
    positions: list[int] = []
    for m in _SPELLED.finditer(text):
        if parts:
            parts.append(_RUN_FILL)
            positions.extend([-1] * len(_RUN_FILL))
        for chunk in re.finditer(r"\S+", m.group()):
            parts.append(chunk.group())
            positions.extend(range(m.start() + chunk.start(), m.start() + chunk.end()))
    return _Spelled("".join(parts), positions) if parts else None


def _word_hits(compiled: _Compiled, skel: _View, spelled: _Spelled | None,
               allowed: list[tuple[int, int]]) -> list[tuple[int, int, str]]:
    """(original start, end, rule) of word matches; matches inside an allowed phrase are dropped."""
    found: list[tuple[int, int, str, bool]] = []
    if compiled.bounded is not None:
        for m in compiled.bounded.finditer(skel.text):
            if _WORDLIKE.search(m.group()):
                found.append((m.start(), m.end(), m.group(), False))
    bare = compiled.bare() if spelled is not None else None
    if bare is not None and spelled is not None:
        for m in bare.finditer(spelled.joined):
            if m.end() > m.start() and _WORDLIKE.search(m.group()):
                found.append((spelled.positions[m.start()], spelled.positions[m.end() - 1] + 1, m.group(), True))
    hits = []
    for start, end, matched, spaced in found:
        if any(a <= start and end <= b for a, b in allowed):
            continue
        hits.append((*skel.span(start, end), compiled.rule_of(matched, spaced)))
    return hits


def _without_overlaps(hits: list[tuple[int, int, str]]) -> list[tuple[int, int, str]]:
    """Keep the longest of overlapping hits of one category (earliest first)."""
    kept: list[tuple[int, int, str]] = []
    for hit in sorted(hits, key=lambda h: (h[0], -h[1])):
        if not kept or hit[0] >= kept[-1][1]:
            kept.append(hit)
    return kept


def _mask(text: str, matches: list[Match], labels: dict[tuple[int, int], str]) -> str:
    """Replace redact-action spans: words by `*` per non-blank character, patterns by `[name]`."""
    spans = sorted((m.start, m.end, labels.get((m.start, m.end))) for m in matches if m.action == "redact")
    merged: list[list[Any]] = []
    for start, end, label in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
            merged[-1][2] = merged[-1][2] or label
        else:
            merged.append([start, end, label])
    out, last = [], 0
    for start, end, label in merged:
        out.append(text[last:start])
        out.append(f"[{label}]" if label else re.sub(r"\S", "*", text[start:end]))
        last = end
    out.append(text[last:])
    return "".join(out)


def moderate(text: str, policy: Policy | None = None) -> Verdict:
    """Check `text` against `policy` (default: the shipped one)."""
    policy = policy or default_policy()
    skel = _view(text, _fold_char, str.lower)
    allowed = [m.span() for m in policy._allow.finditer(skel.text)] if policy._allow else []
    spelled = _spelled_runs(skel.text)
    plain: _View | None = None
    newlines = [m.start() for m in re.finditer("\n", text)]
    matches: list[Match] = []
    labels: dict[tuple[int, int], str] = {}
    for compiled in policy._compiled:
        hits = _word_hits(compiled, skel, spelled, allowed)
        if compiled.patterns:
            plain = plain or _plain(text)
            for rule, regex in compiled.patterns:
                for m in regex.finditer(plain.text):
                    if m.end() > m.start() and _passes(rule.check, m.group()):
                        start, end = plain.span(m.start(), m.end())
                        hits.append((start, end, rule.name))
                        labels[(start, end)] = rule.name
        category = compiled.category
        for start, end, rule in _without_overlaps(hits):
            matches.append(Match(category=category.name, action=category.action, rule=rule,
                                 text=text[start:end], start=start, end=end,
                                 line=bisect.bisect_left(newlines, start) + 1))
    matches.sort(key=lambda m: (m.start, m.end))
    categories = list(dict.fromkeys(m.category for m in matches))
    warnings = []
    for name in categories:
        category = policy.categories[name]
        if category.action == "warn":
            count = sum(m.category == name for m in matches)
            warnings.append(f"matched category '{name}' {count} time{'s' if count > 1 else ''} "
                            "(action: warn; the text is allowed)")
    return Verdict(allowed=not any(m.action == "block" for m in matches), categories=categories,
                   matches=matches, redacted=_mask(text, matches, labels), warnings=warnings)


def enforce(text: str, policy: Policy | None, where: str) -> str:
    """The text with redactions applied; PolicyViolation when a block-action category matched.

    `where` names the text in the message ("prompt", "sample"). The message never repeats what matched.
    """
    verdict = moderate(text, policy)
    raise_if_blocked(verdict, where)
    return verdict.redacted


def raise_if_blocked(verdict: Verdict, where: str, advice: str | None = None) -> None:
    """PolicyViolation naming the blocked categories (never the words) when `verdict` is not allowed."""
    if verdict.allowed:
        return
    blocked = [m for m in verdict.matches if m.action == "block"]
    names = ", ".join(dict.fromkeys(m.category for m in blocked))
    label = "categories" if "," in names else "category"
    raise PolicyViolation(
        f"the {where} was blocked by the moderation policy ({label}: {names}; at character "
        f"{blocked[0].start}); {advice or f'change the {where}'} or pass --policy FILE.toml"
    )


def moderate_command(text: str | None, file: str | None, policy: str | None) -> tuple[str, int]:
    """For `muselab moderate`: the verdict as one JSON line and the exit code (0 allowed, 1 blocked)."""
    if (text is None) == (file is None):
        raise ConfigError("give the text to moderate or --file FILE (one of them)")
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(f"file '{path}' does not exist; pass the path of a text file") from None
        except IsADirectoryError:
            raise DataError(f"'{path}' is a folder; pass the path of a text file") from None
        except UnicodeDecodeError as err:
            raise DataError(f"file '{path}' is not UTF-8 text (bad byte at offset {err.start}); "
                            "save it as UTF-8") from None
    assert text is not None
    verdict = moderate(text, load_policy(policy))
    return verdict.to_json(), 0 if verdict.allowed else 1

