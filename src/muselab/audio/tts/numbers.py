"""Numbers as English words: cardinals, ordinals, years, decades, digits. Every word is in CMUdict.

Multi-word numbers come back as lists ("twenty", "one"), never hyphenated, so each word can carry its
own timestamp.
"""

from __future__ import annotations

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion")
_ORDINAL_IRREGULAR = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                      "nine": "ninth", "twelve": "twelfth"}
MAX_CARDINAL = 10 ** (3 * len(_SCALES)) - 1  # larger numbers are read digit by digit


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    hundreds, rest = divmod(n, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest or not words:
        words.append(_ONES[rest])
    return words


def digits(text: str) -> list[str]:
    """'007' -> zero zero seven."""
    return [_ONES[int(c)] for c in text if c.isdigit()]


def cardinal(n: int) -> list[str]:
    """2024 -> two thousand twenty four; numbers beyond the quadrillions are read digit by digit."""
    if n < 0:
        return ["minus", *cardinal(-n)]
    if n > MAX_CARDINAL:
        return digits(str(n))
    if n == 0:
        return ["zero"]
    groups: list[int] = []
    while n:
        n, group = divmod(n, 1000)
        groups.append(group)
    words: list[str] = []
    for scale in range(len(groups) - 1, -1, -1):
        if groups[scale]:
            words += _below_thousand(groups[scale])
            if _SCALES[scale]:
                words.append(_SCALES[scale])
    return words


def ordinal_word(word: str) -> str:
    """The ordinal of one number word: twenty -> twentieth, one -> first, hundred -> hundredth."""
    if word in _ORDINAL_IRREGULAR:
        return _ORDINAL_IRREGULAR[word]
    if word.endswith("y"):
        return word[:-1] + "ieth"
    return word + "th"


def ordinal(n: int) -> list[str]:
    """21 -> twenty first."""
    words = cardinal(n)
    return [*words[:-1], ordinal_word(words[-1])]


def _pair(n: int) -> list[str]:
    """Two digits as said in years and times: 5 -> oh five, 0 -> hundred-less (empty)."""
    return ["oh", _ONES[n]] if n < 10 else cardinal(n)


def year(n: int) -> list[str]:
    """1990 -> nineteen ninety, 1905 -> nineteen oh five, 1900 -> nineteen hundred, 2005 -> two thousand
    five, 2024 -> twenty twenty four. Outside 1000-9999 it is a cardinal."""
    if not 1000 <= n <= 9999:
        return cardinal(n)
    high, low = divmod(n, 100)
    if 2000 <= n <= 2009 or high % 10 == 0 and low == 0:
        return cardinal(n)  # two thousand five; one thousand; 3000
    if low == 0:
        return [*cardinal(high), "hundred"]
    return [*cardinal(high), *_pair(low)]


def plural_word(word: str) -> str:
    """ninety -> nineties, six -> sixes, hundred -> hundreds."""
    if word.endswith("y"):
        return word[:-1] + "ies"
    if word.endswith(("s", "x")):
        return word + "es"
    return word + "s"


def decade(n: int) -> list[str]:
    """1990 -> nineteen nineties; 90 -> nineties; 2000 -> two thousands."""
    words = year(n) if n >= 100 else cardinal(n)
    return [*words[:-1], plural_word(words[-1])]


def decimal(text: str) -> list[str]:
    """'3.14' -> three point one four; '1,000.5' -> one thousand point five."""
    whole, _, fraction = text.replace(",", "").partition(".")
    words = cardinal(int(whole)) if whole else ["zero"]
    return [*words, "point", *digits(fraction)] if fraction else words
