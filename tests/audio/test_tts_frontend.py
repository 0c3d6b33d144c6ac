"""The speech front end: normalisation of tricky text, CMUdict, G2P hook, pauses, inventory."""

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import error_message
from muselab.audio.tts import Frontend, PhonemeInventory, split_sentences
from muselab.audio.tts.inventory import LONG_PAUSE, MEDIUM_PAUSE, PHONES, SHORT_PAUSE
from muselab.audio.tts.numbers import cardinal, ordinal, year
from muselab.core.errors import CheckpointError, ControlError, MuselabError


@pytest.fixture(scope="module")
def frontend() -> Frontend:
    return Frontend()


def said(frontend: Frontend, text: str) -> str:
    return " | ".join(r.normalized for r in frontend.sentences(text))


def test_doctor_money_time_and_date(frontend: Frontend) -> None:
    result = frontend.phonemize("Dr. Smith paid $3.50 at 10:30 on 12/5/2024")
    assert result.normalized == ("doctor smith paid three dollars and fifty cents at ten thirty on december fifth "
                                 "twenty twenty four <lp>")
    assert result.unknown == []
    # Each spoken word points back at the text it came from, for word timestamps.
    money = [w for w in result.words if w.source == "$3.50"]
    assert [w.word for w in money] == ["three", "dollars", "and", "fifty", "cents"]
    assert result.text[money[0].char_start:money[0].char_end] == "$3.50"
    assert result.phonemes[result.words[0].start:result.words[0].end] == ["D", "AA", "K", "T", "ER"]


def test_acronyms_possessives_and_ampersand(frontend: Frontend) -> None:
    result = frontend.phonemize("NASA's R&D")
    assert result.normalized == "nasa's r and d <lp>"
    assert result.phonemes[:5] == ["N", "AE", "S", "AH", "Z"]  # said as a word, it is in CMUdict
    # An acronym CMUdict lacks is spelled, and that is not an unknown word.
    gpu = frontend.phonemize("the GPU")
    assert gpu.words[1].how == "letters"
    assert gpu.phonemes[gpu.words[1].start:gpu.words[1].end] == ["JH", "IY", "P", "IY", "Y", "UW"]
    assert gpu.unknown == []
    plural = frontend.phonemize("two GPUs")
    assert plural.phonemes[plural.words[1].start:plural.words[1].end][-1] == "Z"


def test_saint_and_street(frontend: Frontend) -> None:
    assert said(frontend, "St. Louis on St. Patrick's Day") == "saint louis on saint patrick's day <lp>"
    assert said(frontend, "She lives on Main St. near the park.") == "she lives on main street near the park <lp>"
    assert said(frontend, "Visit Dr. Smith on Elm Dr. today.") == "visit doctor smith on elm drive today <lp>"


@pytest.mark.parametrize(("text", "expected"), [
    ("the 1990s", "the nineteen nineties <lp>"),
    ("the '80s", "the eighties <lp>"),
    ("21st", "twenty first <lp>"),
    ("the 2nd and 3rd and 112th", "the second and third and one hundred twelfth <lp>"),
    ("in 1905 and 2005 and 1900", "in nineteen oh five and two thousand five and nineteen hundred <lp>"),
    ("10,000 people", "ten thousand people <lp>"),
    ("pi is 3.14", "pi is three point one four <lp>"),
    ("it was -5 out", "it was minus five out <lp>"),
    ("50% off", "fifty percent off <lp>"),
    ("$1.01 or $0.99 or £5", "one dollar and one cent or ninety nine cents or five pounds <lp>"),
    ("$3.5 million", "three point five million dollars <lp>"),
    ("at 10:00 or 9:05 pm", "at ten o'clock or nine oh five p m <lp>"),
    ("at 5 pm", "at five p m <lp>"),
    ("on 2024-12-05", "on december fifth twenty twenty four <lp>"),
    ("on 25/12/2024", "on december twenty fifth twenty twenty four <lp>"),
    ("from 1990-2000", "from nineteen ninety to two thousand <lp>"),
    ("a well-known man", "a well known man <lp>"),
    ("Mr. and Mrs. Jones, etc.", "mister and missus jones <sp> et cetera <lp>"),
    ("the U.S.A. is big", "the u s a is big <lp>"),
    ("agent 007", "agent zero zero seven <lp>"),
    ("café naïve", "cafe naive <lp>"),
    ("met on Jan. 5th at 3:45 p.m. today", "met on january fifth at three forty five p m today <lp>"),
    ("AT&T and IBM", "a t and t and ibm <lp>"),  # IBM: one word, spelled (see the acronym test)
    ("See fig. 3, No. 7 on p. 12", "see figure three <sp> number seven on page twelve <lp>"),
    ("3/4 cup, 1/2 and 2/3", "three quarters cup <sp> one half and two thirds <lp>"),
    ("v2.0.1 at bob@example.com", "v two point zero point one at bob at example dot com <lp>"),
    ("x = 5 + 3", "x equals five plus three <lp>"),
])
def test_normalisation(frontend: Frontend, text: str, expected: str) -> None:
    assert said(frontend, text) == expected


def test_day_first_dates() -> None:
    assert Frontend(day_first=True).phonemize("12/5/2024").normalized.startswith("may twelfth")


def test_punctuation_gives_pauses_of_three_lengths(frontend: Frontend) -> None:
    result = frontend.phonemize("Well, yes; no -- maybe. Really?")
    pauses = [p for p in result.phonemes if p.startswith("<")]
    assert pauses == [SHORT_PAUSE, MEDIUM_PAUSE, MEDIUM_PAUSE, LONG_PAUSE, LONG_PAUSE]
    # Marks in a row make one pause, the longest; leading marks make none.
    assert frontend.phonemize("... Hi,. there").phonemes.count(LONG_PAUSE) == 2
    assert not frontend.phonemize("(hi)").phonemes[0].startswith("<")


def test_unknown_words_are_spelled_and_reported(frontend: Frontend) -> None:
    result = frontend.phonemize("The zorblaxian flurbs sang")
    assert result.unknown == ["zorblaxian", "flurbs"]
    span = result.words[2]
    assert span.how == "spelled"
    assert result.phonemes[span.start:span.end] == ["EH", "F", "EH", "L", "Y", "UW", "AA", "R", "B", "IY", "EH", "S"]


def test_g2p_pronounces_unknown_words_in_one_batch() -> None:
    calls: list[list[str]] = []

    def g2p(words: list[str]) -> list[list[str]]:
        calls.append(words)
        return [["Z", "AO1", "R", "B"] if w == "zorb" else ["QQ"] for w in words]

    results = Frontend(g2p=g2p, stress=True).sentences("A zorb. Two zorbs and a blik. Zorb again.")
    assert calls == [["zorb", "zorbs", "blik"]]  # every sentence's unknown words, once each, in one call
    first = results[0]
    assert first.words[1].how == "g2p" and first.phonemes[first.words[1].start:first.words[1].end] == [
        "Z", "AO1", "R", "B"]
    # A pronunciation outside ARPAbet is not trusted: the word is spelled and reported.
    assert results[1].unknown == ["zorbs", "blik"]


def test_g2p_must_answer_every_word() -> None:
    with pytest.raises(MuselabError, match="one list of phonemes per word"):
        Frontend(g2p=lambda words: []).phonemize("a zorblik")


def test_stress_kept_or_stripped() -> None:
    with_stress = Frontend(stress=True).phonemize("NASA")
    assert with_stress.phonemes == ["N", "AE1", "S", "AH0", LONG_PAUSE]
    assert Frontend(stress=False).phonemize("NASA").phonemes == ["N", "AE", "S", "AH", LONG_PAUSE]


def test_empty_and_unspeakable_text_are_one_line_errors(frontend: Frontend) -> None:
    for text in ("", "   \n", "!!! ... ???", "日本語", "🙂🙂"):
        with pytest.raises(ControlError) as err:
            frontend.sentences(text)
        assert "\n" not in error_message(err)
    with pytest.raises(ControlError, match="nothing to speak"):
        frontend.phonemize("--")


def test_ten_thousand_characters_are_split_into_sentences(frontend: Frontend) -> None:
    base = ("Dr. Smith paid $3.50 at 10:30 on 12/5/2024, and NASA's R&D team met him in the 1990s. "
            "It was the 21st time; nobody minded! Then a very long clause followed with many plain words "
            "that go on and on without any stop at all for quite a while ")
    text = (base * (10_000 // len(base) + 1))[:10_000]
    results = frontend.sentences(text)
    assert len(results) > 100
    assert all(len(r.words) <= 3 * frontend.max_words for r in results)
    assert all(r.phonemes[-1] == LONG_PAUSE or r.phonemes[-1].startswith("<") for r in results)
    # Run-on text without punctuation is cut every max_words tokens.
    run_on = split_sentences("word " * 1000, max_words=40)
    assert len(run_on) == 25 and all(len(s.split()) == 40 for _, s in run_on)


def test_sentence_splitting_respects_titles_and_initials() -> None:
    pieces = [s for _, s in split_sentences("Dr. Smith met J. R. Tolkien. They talked! Did they? Yes.")]
    assert pieces == ["Dr. Smith met J. R. Tolkien.", "They talked!", "Did they?", "Yes."]


def test_number_words() -> None:
    assert cardinal(0) == ["zero"]
    assert cardinal(1_000_001) == ["one", "million", "one"]
    assert cardinal(999) == ["nine", "hundred", "ninety", "nine"]
    assert ordinal(40) == ["fortieth"] and ordinal(12) == ["twelfth"] and ordinal(101) == ["one", "hundred", "first"]
    assert year(2024) == ["twenty", "twenty", "four"] and year(2000) == ["two", "thousand"]
    assert " ".join(cardinal(10 ** 30)).startswith("one zero zero")  # past the named scales: digits


def test_inventory_ids_and_json(tmp_path: Path) -> None:
    for stress in (False, True):
        inventory = PhonemeInventory(stress=stress)
        assert len(inventory) == 6 + (39 + 15 * 2 if stress else 39)
        result = Frontend(stress=stress).phonemize("Hello, world!")
        ids = result.ids(inventory, add_bos_eos=True)
        assert inventory.decode(ids)[1:-1] == result.phonemes
        path = inventory.save(tmp_path / f"phonemes-{stress}.json")
        assert PhonemeInventory.load(path) == inventory
    with pytest.raises(ControlError, match="not in the inventory"):
        PhonemeInventory(stress=False).encode(["AH0"])
    data = json.loads(path.read_text())
    data["symbols"] = data["symbols"][::-1]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="other symbols"):
        PhonemeInventory.load(tmp_path / "bad.json")
    (tmp_path / "foreign.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="not a muselab phoneme inventory"):
        PhonemeInventory.load(tmp_path / "foreign.json")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(min_size=0, max_size=200) | st.text(alphabet="0123456789$£€%:/.,-'&#@ aAsSt.DrR", max_size=60))
def test_any_text_gives_inventory_phonemes_or_a_one_line_error(text: str) -> None:
    frontend = Frontend(stress=True)
    try:
        results = frontend.sentences(text)
    except ControlError as err:
        assert "\n" not in str(err)
        return
    inventory = frontend.inventory
    for result in results:
        assert result.words and all(p in inventory for p in result.phonemes)
        assert all(0 <= w.start < w.end <= len(result.phonemes) for w in result.words)
        assert result.phonemes[-1].startswith("<")
        assert set(PHONES) >= {p.rstrip("012") for p in result.phonemes if not p.startswith("<")}



@pytest.mark.slow
def test_a_trained_g2p_run_plugs_in(tmp_path: Path) -> None:
    from muselab import api

    # Made-up consonant-vowel-consonant words -> ARPAbet, so the tiny model's outputs are phonemes.
    consonants = {"b": "B", "d": "D", "f": "F", "g": "G", "k": "K", "l": "L", "m": "M", "n": "N", "p": "P",
                  "t": "T", "v": "V", "z": "Z"}
    vowels = {"a": "AE1", "i": "IH1", "o": "AA1", "u": "AH1", "e": "EH1"}
    rows = [f"{a}{v}{b}\t{consonants[a]} {vowels[v]} {consonants[b]}\n"
            for a in consonants for v in vowels for b in consonants]
    data = tmp_path / "pairs.tsv"
    data.write_text("".join(rows))
    api.train("text-seq2seq", str(data), tmp_path / "g2p", preset="tiny", max_steps=40, quiet=True)
    run = api.load(tmp_path / "g2p")
    frontend = Frontend(g2p=lambda words: run.generate(words).items, stress=True)
    result = frontend.phonemize("The zuv met a vefs")  # neither is in CMUdict
    guessed = [w for w in result.words if w.word in ("zuv", "vefs")]
    assert len(guessed) == 2
    assert all(w.how in ("g2p", "spelled") for w in guessed)
    assert set(result.unknown) == {w.word for w in guessed if w.how == "spelled"}
    assert all(p in frontend.inventory for p in result.phonemes)
    assert any(w.how == "g2p" for w in guessed)  # the model's phonemes were taken (the tiny one's are poor)


def test_every_builtin_speech_sentence_is_in_cmudict(frontend: Frontend) -> None:
    from muselab.data.speech import builtin_sentences

    # builtin:speech trains the acoustic model: none of its words may fall back to spelling.
    results = [frontend.phonemize(s) for s in builtin_sentences()]
    assert [r.text for r in results if r.unknown] == []
    covered = {p for r in results for p in r.phonemes}
    assert covered >= set(PHONES) | {LONG_PAUSE}  # every phone is heard in training
