"""Moderation: obfuscated words are caught, innocent words pass, personal data is masked in place, and
policy files edit the shipped policy with one-line errors."""

import json
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import error_message, write
from muselab.core.errors import ConfigError, DataError
from muselab.safety.moderation import (
    Category,
    PatternRule,
    Policy,
    PolicyViolation,
    default_policy,
    enforce,
    load_policy,
    moderate,
    moderate_command,
    skeleton,
)


def flagged(text: str, policy: Policy | None = None) -> list[str]:
    return moderate(text, policy).categories


# ------------------------------------------------------------------------------------- obfuscation

@pytest.mark.parametrize("kind, text", [
    ("plain", "what a bastard"),
    ("case", "what a BaStArD"),
    ("repeats", "what a baaastaaard"),
    ("dots", "what a b.a.s.t.a.r.d"),
    ("hyphens", "what a b-a-s-t-a-r-d"),
    ("underscores", "what a b_a_s_t_a_r_d"),
    ("spaced letters", "what a b a s t a r d"),
    ("wide spaced letters", "what a b  a  s  t  a  r  d"),
    ("leetspeak", "what a b4$t4rd"),
    ("leetspeak digits", "what a 8457ard"),
    ("cyrillic look-alikes", "what a bаstаrd"),  # Cyrillic а
    ("greek look-alikes", "what a bαstαrd"),  # Greek alpha
    ("fullwidth", "what a ｂａｓｔａｒｄ"),
    ("mathematical letters", "what a 𝐛𝐚𝐬𝐭𝐚𝐫𝐝"),
    ("accents", "what a bâstárd"),
    ("combining accents", "what a ba\u0301sta\u0300rd"),
    ("zero-width space", "what a bas\u200btard"),
    ("zero-width joiners", "what a b\u200ca\u200dstard"),
    ("word joiner and soft hyphen", "what a bas\u2060ta\u00adrd"),
    ("byte order mark", "what a \ufeffbastard"),
    ("plural", "what bastards"),
    ("asterisk for a vowel", "what a b*stard"),
])
def test_obfuscated_words_are_caught(kind: str, text: str) -> None:
    verdict = moderate(text)
    assert verdict.categories == ["profanity"], kind
    match = verdict.matches[0]
    assert match.rule == "bastard*"
    # the reported span is the whole obfuscated word, at its original offsets
    assert text[match.start:match.end] == match.text
    assert match.end == len(text) and text[:match.start].strip("\ufeff ") in ("what a", "what")


@pytest.mark.parametrize("text", [
    "assassin", "classic", "Scunthorpe", "cocktail", "therapist", "grape", "Sussex", "Middlesex", "analysis",
    "bass", "passion", "assume", "embassy", "assess", "harass", "Dickens", "Hancock", "cockpit", "peacock",
    "scrapbook", "skyscraper", "Yamashita", "Matsushita", "document", "circumstance", "spices", "cumulative",
    "cucumber", "title", "titanic", "titter", "arsenal", "arsenic", "drapes", "Penistone", "sextant",
    "sexton", "pussycat", "buttress", "niggard", "niggle", "snigger", "swank", "shiitake", "Wankel",
    "cum laude", "a kitchen-cum-diner", "the opposite sex", "John's ex", "as sure as s", "grass",
    "the rapeseed harvest", "Dick Van Dyke", "fight the kill switch", "a classy cocktail in Sussex",
])
def test_innocent_words_pass(text: str) -> None:
    assert flagged(text) == [], text


def test_words_with_double_letters_need_them() -> None:
    # "ass" has a double s: a run of one letter in the text never matches it, longer runs do
    assert flagged("as far as I know") == []
    assert flagged("you asss") == ["profanity"]


def test_skeleton_maps_lookalikes_case_and_invisibles() -> None:
    assert skeleton("ＨéＬ\u200bＬо") == "hello"  # fullwidth, accent, zero-width, Cyrillic o


# ------------------------------------------------------------------- separators of every kind (property)

# The shipped one-word entries of every word category, letters only ("*fuck*" -> "fuck").
LISTED = sorted({(c.name, w.strip("*")) for c in default_policy().categories.values() for w in c.words
                 if re.fullmatch(r"\*?[a-z]+\*?", w)})
SYMBOLS = "*._-|+~/"
GLUE = "*_-|+~"  # symbols whose neighbouring blanks may stand inside a word


@st.composite
def separators(draw: st.DrawFn, symbols: str = SYMBOLS, spaces: bool = True) -> str:
    """One to three symbols, mixed and repeated, with or without blanks around them."""
    core = draw(st.text(st.sampled_from(symbols), min_size=1, max_size=3))
    if not spaces:
        return core
    return " " * draw(st.integers(0, 2)) + core + " " * draw(st.integers(0, 2))


@st.composite
def obfuscated(draw: st.DrawFn) -> tuple[str, str]:
    """(category, text) with a listed word hidden by random case, repeats and separators in a sentence."""
    category, word = draw(st.sampled_from(LISTED))
    letters = [c.upper() if draw(st.booleans()) else c for c in word]
    letters = [c * draw(st.integers(1, 2)) if draw(st.integers(0, 4)) == 0 else c for c in letters]
    gaps = len(letters) - 1
    how = draw(st.sampled_from(["every letter", "some letters", "glue with blanks", "line break"]))
    if how == "every letter":  # "s * h * i * t", "s.-h_i||t", "s* h. i t"
        seps = [draw(separators(spaces=draw(st.booleans()))) for _ in range(gaps)]
    elif how == "some letters":  # "sh-*it", "bas..tard"
        seps = [draw(separators(spaces=False)) if draw(st.booleans()) else "" for _ in range(gaps)]
    elif how == "glue with blanks":  # "sh * it", "bas _tard"
        cut = draw(st.integers(0, gaps - 1))
        seps = [draw(separators(GLUE)) if k == cut else "" for k in range(gaps)]
    else:  # "bas-\ntard", "bas\n  tard"
        cut = draw(st.integers(0, gaps - 1))
        brk = draw(st.sampled_from(["\n", "-\n", "\n  ", " -\n"]))
        seps = [brk if k == cut else "" for k in range(gaps)]
    hidden = letters[0] + "".join(sep + c for sep, c in zip(seps, letters[1:], strict=True))
    before, after = draw(st.sampled_from([("", ""), ("you are a ", " indeed."), ("Well, ", "!"), ("(", ")")]))
    return category, before + hidden + after


@settings(max_examples=400, deadline=None)
@given(case=obfuscated())
def test_listed_words_are_caught_through_any_separator(case: tuple[str, str]) -> None:
    category, text = case
    assert category in flagged(text), text


@pytest.mark.parametrize("text", [
    "s*h*i*t", "s * h * i * t", "s|h|i|t", "s+h+i+t", "s.-h_-i**t", "sh-it", "fu.ck", "s.h. i.t",
    "bas-\ntard", "bas\ntard", "bas -\n  tard", "bas * tard", "sh |it", "b\na\ns\nt\na\nr\nd",
    "s *_* h *_* i *_* t", "f . u . c . k", "son of a b-i-t-c-h", "what a b4$t4rd",
])
def test_examples_of_separators_are_caught(text: str) -> None:
    assert flagged(text) == ["profanity"], text


# Real words next to each other, joined by punctuation, blanks or line breaks, with look-alike substrings.
INNOCENT = [
    "Her Shih-tzu barked at the assassin.", "as s/he said, the class was over", "e.g. the grapes, i.e. the vines",
    "J. R. R. Tolkien and C. S. Lewis met in Oxford.", "Pour 3.5 litres into the cocktail shaker.",
    "The well-known therapist moved to Sussex.", "a kitchen-cum-diner in Middlesex", "See https://example.com/a-b/c.",
    "Dickens wrote of the analysis of a bass-heavy tune.", "an up-to-date, state-of-the-art compass",
    "The pass\nwas closed by snow.", "as\nsoon as the grass\ngrew", "We met at 10.30 a.m. in St. Albans.",
    "The grass-\nhopper leapt.", "The sun - as usual - rose.", "the shell-shocked crew", "a cock-a-hoop mood",
    "Mr. Butts and Mrs. Cockburn", "his/her class/course", "Q&A: the Scunthorpe match", "Arsenal's assistant",
    "She's a therapist; he's an analyst.", "the pen is mightier", "as sure as s", "Titanic's titbits",
    "Hancock's cockpit log", "a peacock-blue scrapbook", "Matsushita and Yamashita", "the rapeseed oil",
    "x + y = z, and C++ is fast", "the 1-2-3 of it", "Sextant, sexton and Essex", "cum laude in 2019",
    "a| b | c", "snake_case and kebab-case", "mass-market paperbacks", "Hello -- is it me?",
    "U.S. and U.K. assets", "pi = 3.14159", "the passage to Assisi", "Penistone's shiitake farm",
]


@pytest.mark.parametrize("text", INNOCENT)
def test_innocent_sentences_pass(text: str) -> None:
    assert flagged(text) == [], text


# -------------------------------------------------------------------------------- actions and output

def test_redact_masks_in_place_and_keeps_offsets() -> None:
    text = "Hey, sh!t happens\nand b i t c h too"
    verdict = moderate(text)
    assert verdict.allowed
    assert verdict.redacted == "Hey, **** happens\nand * * * * * too"
    assert len(verdict.redacted) == len(text)
    first, second = verdict.matches
    assert (first.start, first.end, first.text, first.line) == (5, 9, "sh!t", 1)
    assert (second.text, second.line) == ("b i t c h", 2)


def test_block_action_disallows_and_enforce_raises_one_line_without_the_word() -> None:
    text = "write me some porn please"
    verdict = moderate(text)
    assert not verdict.allowed and verdict.categories == ["sexual"]
    with pytest.raises(PolicyViolation) as err:
        enforce(text, None, "prompt")
    msg = error_message(err)
    assert "category: sexual" in msg and "--policy" in msg and "porn" not in msg


def test_warn_action_allows_and_warns() -> None:
    verdict = moderate("I will kill you, he said")
    assert verdict.allowed
    assert verdict.categories == ["violence"]
    assert verdict.redacted == "I will kill you, he said"
    assert len(verdict.warnings) == 1 and "violence" in verdict.warnings[0]


def test_enforce_returns_redacted_text() -> None:
    assert enforce("well, fuck", None, "sample") == "well, ****"


def test_emails_and_phones_are_redacted_with_labels_at_original_offsets() -> None:
    text = ("Mail jane.doe+news@example.co.uk, call (555) 123-4567 or 555.987.6543, "
            "or +44 20 7946 0958, or +1 415 555 0100.")
    verdict = moderate(text)
    spans = [(m.rule, m.text) for m in verdict.matches]
    assert spans == [("email", "jane.doe+news@example.co.uk"), ("phone", "(555) 123-4567"),
                     ("phone", "555.987.6543"), ("phone", "+44 20 7946 0958"), ("phone", "+1 415 555 0100")]
    for m in verdict.matches:
        assert text[m.start:m.end] == m.text
    assert verdict.redacted == "Mail [email], call [phone] or [phone], or [phone], or [phone]."


def test_fullwidth_and_zero_width_do_not_hide_an_email() -> None:
    text = "write to bob\u200b@ｅｘａｍｐｌｅ.com now"
    verdict = moderate(text)
    assert [m.rule for m in verdict.matches] == ["email"]
    assert verdict.redacted == "write to [email] now"


def test_card_numbers_need_a_valid_luhn_checksum() -> None:
    assert moderate("card 4111 1111 1111 1111").redacted == "card [card]"
    assert flagged("order 4111 1111 1111 1112 shipped") == []
    assert flagged("the year 1999 and 42 apples") == []


def test_verdict_json_is_one_line_with_the_documented_fields() -> None:
    line = moderate("sh1t, mail me at a@b.io").to_json()
    assert "\n" not in line
    data = json.loads(line)
    assert set(data) == {"allowed", "categories", "matches", "redacted", "warnings"}
    assert set(data["matches"][0]) == {"category", "action", "rule", "text", "start", "end", "line"}


# ------------------------------------------------------------------------------------ policy files

def test_user_policy_adds_and_removes_words_and_changes_actions(tmp_path) -> None:
    path = write(tmp_path / "p.toml", """
allow = ["bastard son"]
[categories.profanity]
action = "block"
add_words = ["frak*"]
remove_words = ["ASS"]
[categories.violence]
enabled = false
[categories.fruit]
action = "warn"
words = ["durian"]
""")
    policy = load_policy(path)
    assert flagged("frakking toaster", policy) == ["profanity"]
    assert not moderate("frakking toaster", policy).allowed  # profanity now blocks
    assert flagged("what an ass", policy) == []
    assert flagged("I will kill you", policy) == []
    assert flagged("a d.u.r.i.a.n pie", policy) == ["fruit"]
    assert flagged("the bastard son", policy) == []
    assert flagged("sexting", policy) == ["sexual"]  # untouched categories stay


def test_policy_can_stand_alone(tmp_path) -> None:
    path = write(tmp_path / "p.toml", 'extends = "none"\n[categories.x]\naction = "redact"\nwords = ["bad"]\n')
    policy = load_policy(path)
    assert list(policy.categories) == ["x"]
    assert flagged("porn", policy) == []
    assert moderate("so baaad", policy).redacted == "so *****"


def test_patterns_can_be_added_and_removed(tmp_path) -> None:
    path = write(tmp_path / "p.toml", """
[categories.personal_data]
remove_patterns = ["card"]
add_patterns = [{ name = "ticket", regex = 'TCK-\\d{4}' }]
""")
    policy = load_policy(path)
    assert moderate("ref TCK-1234", policy).redacted == "ref [ticket]"
    assert flagged("card 4111 1111 1111 1111", policy) == []


def test_policy_in_code() -> None:
    policy = Policy([Category("names", "redact", ("voldemort",)),
                     Category("codes", "block", patterns=(PatternRule(name="code", regex=r"X-\d+"),))])
    verdict = moderate("V0ldem0rt sent X-42", policy)
    assert verdict.categories == ["names", "codes"] and not verdict.allowed


@pytest.mark.parametrize("content, expected", [
    ("[categories.profanity]\nwrods = ['x']\n", "unknown key 'categories.profanity.wrods'"),
    ("colour = 1\n", "unknown key 'colour'"),
    ("[categories.profanity]\naction = 'delete'\n", "categories.profanity.action"),
    ("[categories.new]\nwords = ['x']\n", "category 'new' of policy file"),
    ("[categories.new]\naction = 'warn'\n", "has no words or patterns"),
    ("[categories.profanity]\nremove_words = ['zebra']\n", "cannot remove word 'zebra'"),
    ("[categories.profanity]\nadd_words = ['f*ck']\n", "'*' may only start or end"),
    ("[categories.profanity]\nadd_words = ['123']\n", "has no letters"),
    ("[categories.x]\naction = 'warn'\npatterns = [{name = 'p', regex = '(('}]\n", "not a valid regex"),
    ("[categories.Bad-Name]\naction = 'warn'\nwords = ['x']\n", "names are lower-case"),
    ("[categories.x]\naction = 'warn'\npatterns = [{name = 'p', rgx = 'a'}]\n",
     "unknown key 'categories.x.patterns.0.rgx'"),
    ("[categories.x]\naction = 'warn'\npatterns = [{name = 'p'}]\n", "missing key 'categories.x.patterns.0.regex'"),
    ("[categories.profanity\naction = 'warn'\n", "is not valid TOML"),
])
def test_policy_errors_are_one_line(tmp_path, content: str, expected: str) -> None:
    path = write(tmp_path / "p.toml", content)
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert expected in error_message(err)


def test_bad_toml_names_the_line(tmp_path) -> None:
    path = write(tmp_path / "p.toml", "[categories.x]\naction = 'warn'\nwords = ['a',\n")
    with pytest.raises(ConfigError) as err:
        load_policy(path)
    assert "line" in error_message(err)


def test_missing_policy_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        load_policy(tmp_path / "nope.toml")
    assert "does not exist" in error_message(err)


def test_default_policy_is_shared_and_has_the_documented_actions() -> None:
    policy = load_policy(None)
    assert policy is default_policy()
    actions = {c.name: c.action for c in policy.categories.values()}
    assert actions == {"profanity": "redact", "sexual": "block", "violence": "warn", "personal_data": "redact"}


# --------------------------------------------------------------------------------------------- CLI

def test_moderate_command_text_and_exit_codes() -> None:
    line, code = moderate_command("hello there", None, None)
    assert code == 0 and json.loads(line)["allowed"]
    line, code = moderate_command("some hentai", None, None)
    assert code == 1 and json.loads(line)["categories"] == ["sexual"]


def test_moderate_command_file_reports_lines(tmp_path) -> None:
    path = write(tmp_path / "in.txt", "fine line\nsecond line with a twat\n")
    line, code = moderate_command(None, str(path), None)
    data = json.loads(line)
    assert code == 0 and data["matches"][0]["line"] == 2
    assert data["redacted"] == "fine line\nsecond line with a ****\n"


def test_moderate_command_errors(tmp_path) -> None:
    with pytest.raises(ConfigError) as err:
        moderate_command(None, None, None)
    error_message(err)
    with pytest.raises(DataError) as err:
        moderate_command(None, str(tmp_path / "missing.txt"), None)
    assert "does not exist" in error_message(err)
    write(tmp_path / "bin.txt", b"\xff\xfe\x00bad")
    with pytest.raises(DataError) as err:
        moderate_command(None, str(tmp_path / "bin.txt"), None)
    assert "UTF-8" in error_message(err)
    with pytest.raises(ConfigError):
        moderate_command("x", None, str(tmp_path / "no-policy.toml"))
