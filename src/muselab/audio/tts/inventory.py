"""The phoneme inventory: ARPAbet's 39 phones, optional stress variants, pause and boundary symbols.

Ids are fixed by the symbol order below, so a model and its inventory file agree on what id 7 means;
the inventory is saved beside the model as JSON and checked when loaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from muselab.core.errors import CheckpointError, ControlError
from muselab.core.io import atomic_write_json, read_json_file

INVENTORY_FORMAT = 1

VOWELS = ("AA", "AE", "AH", "AO", "AW", "AY", "EH", "ER", "EY", "IH", "IY", "OW", "OY", "UH", "UW")
CONSONANTS = ("B", "CH", "D", "DH", "F", "G", "HH", "JH", "K", "L", "M", "N", "NG", "P", "R", "S", "SH", "T",
              "TH", "V", "W", "Y", "Z", "ZH")
PHONES = tuple(sorted(VOWELS + CONSONANTS))  # the 39 ARPAbet phones of CMUdict

PAD = "<pad>"
BOS = "<bos>"
EOS = "<eos>"
SHORT_PAUSE = "<sp>"  # comma
MEDIUM_PAUSE = "<mp>"  # semicolon, colon, dash, brackets
LONG_PAUSE = "<lp>"  # end of a sentence: . ? !
SPECIALS = (PAD, BOS, EOS, SHORT_PAUSE, MEDIUM_PAUSE, LONG_PAUSE)
PAUSES = (SHORT_PAUSE, MEDIUM_PAUSE, LONG_PAUSE)  # shortest first
STRESS_DIGITS = "012"


def strip_stress(phone: str) -> str:
    """'AH0' -> 'AH'; pauses and consonants are returned unchanged."""
    return phone[:-1] if phone[-1:] in STRESS_DIGITS and phone[:-1] in VOWELS else phone


@dataclass(frozen=True)
class PhonemeInventory:
    """Symbols and their ids: the specials first (pad is 0), then the phones."""

    stress: bool = False
    symbols: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        phones: list[str] = []
        for phone in PHONES:
            if self.stress and phone in VOWELS:
                phones.extend(phone + digit for digit in STRESS_DIGITS)
            else:
                phones.append(phone)
        object.__setattr__(self, "symbols", SPECIALS + tuple(phones))
        object.__setattr__(self, "_ids", {s: i for i, s in enumerate(self.symbols)})

    def __len__(self) -> int:
        return len(self.symbols)

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._ids  # type: ignore[attr-defined]

    @property
    def pad_id(self) -> int:
        return 0

    def encode(self, phonemes: Iterable[str], add_bos_eos: bool = False) -> list[int]:
        """Ids of `phonemes`; an unknown symbol is a ControlError naming it."""
        ids: dict[str, int] = self._ids  # type: ignore[attr-defined]
        out = [ids[BOS]] if add_bos_eos else []
        for symbol in phonemes:
            index = ids.get(symbol)
            if index is None:
                kind = "with" if self.stress else "without"
                raise ControlError(f"phoneme {symbol!r} is not in the inventory ({kind} stress); use ARPAbet "
                                   f"phones such as {'AH0' if self.stress else 'AH'} or the pauses {', '.join(PAUSES)}")
            out.append(index)
        if add_bos_eos:
            out.append(ids[EOS])
        return out

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Symbols of `ids`, padding dropped."""
        return [self.symbols[i] for i in ids if i != self.pad_id]

    def to_dict(self) -> dict[str, object]:
        return {"format": INVENTORY_FORMAT, "stress": self.stress, "symbols": list(self.symbols)}

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> PhonemeInventory:
        """Read an inventory file; one that does not match this library's symbol order is refused."""
        data = read_json_file(Path(path), "phoneme inventory")
        if not isinstance(data, dict) or data.get("format") != INVENTORY_FORMAT or \
                not isinstance(data.get("stress"), bool):
            raise CheckpointError(f"'{path}' is not a muselab phoneme inventory (format {INVENTORY_FORMAT}); "
                                  "re-save the model with this version of muselab")
        inventory = cls(stress=data["stress"])
        if data.get("symbols") != list(inventory.symbols):
            raise CheckpointError(f"phoneme inventory '{path}' lists other symbols than this muselab version "
                                  "uses; retrain the model or use the muselab version that saved it")
        return inventory
