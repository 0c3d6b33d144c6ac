"""Provenance inside the file: PNG text chunks and WAV RIFF chunks, written atomically and read back.

PNG: the full manifest as JSON in an iTXt chunk `muselab:provenance`, a `Software` and a `Comment` text
entry, and an XMP packet (`XML:com.adobe.xmp`) whose `Iptc4xmpExt:DigitalSourceType` says
trainedAlgorithmicMedia, which is where IPTC- and C2PA-aware tools look.
WAV: 16-bit PCM written by soundfile, then a LIST/INFO chunk (ICMT comment, ISFT software) that common
players show, and a `mslb` chunk with the full manifest JSON. Both stay readable by any PNG/WAV reader.
MIDI: a copyright meta event with the one-line comment, and a text meta event `muselab:provenance {JSON}`
at the start of the first track (ASCII JSON, which every MIDI reader passes through).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np
import soundfile as sf
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from muselab import __version__
from muselab.core.errors import DataError
from muselab.core.io import atomic_write

PNG_KEY = "muselab:provenance"
WAV_CHUNK = b"mslb"
XMP_KEY = "XML:com.adobe.xmp"
# IPTC digital source type for media made by a trained model (the manifest normally carries it too)
TRAINED_ALGORITHMIC_MEDIA = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIDI_MAGIC = b"MThd"


def _software() -> str:
    return f"muselab {__version__}"


def _comment(manifest: dict[str, Any]) -> str:
    parts = [f"recipe {manifest['recipe']}" if manifest.get("recipe") else "",
             f"seed {manifest['seed']}" if manifest.get("seed") is not None else ""]
    details = ", ".join(p for p in parts if p)
    return f"AI-generated with {_software()}" + (f" ({details})" if details else "") + f"; provenance in '{PNG_KEY}'"


def _xmp(manifest: dict[str, Any]) -> str:
    source = escape(str(manifest.get("digital_source_type") or TRAINED_ALGORITHMIC_MEDIA))
    created = f"\n   <xmp:CreateDate>{escape(str(manifest['created']))}</xmp:CreateDate>" if manifest.get("created") else ""
    return f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/">
   <Iptc4xmpExt:DigitalSourceType>{source}</Iptc4xmpExt:DigitalSourceType>
   <xmp:CreatorTool>{escape(_software())}</xmp:CreatorTool>{created}
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""


def write_png(path: str | Path, image: np.ndarray, manifest: dict[str, Any]) -> Path:
    """Write a uint8 [H,W], [H,W,3] or [H,W,4] image as PNG with `manifest` inside; atomic."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 image [H,W] or [H,W,C], got {image.dtype} {image.shape}")
    info = PngImagePlugin.PngInfo()
    info.add_itxt(PNG_KEY, json.dumps(manifest, ensure_ascii=False, default=str))
    info.add_text("Software", _software())
    info.add_itxt("Comment", _comment(manifest))
    info.add_itxt(XMP_KEY, _xmp(manifest))
    picture = Image.fromarray(np.ascontiguousarray(image))
    return atomic_write(Path(path), lambda tmp: picture.save(tmp, format="PNG", pnginfo=info))


def _chunk(chunk_id: bytes, payload: bytes) -> bytes:
    """A RIFF chunk: id, little-endian size (without the pad byte), payload, pad to an even length."""
    return chunk_id + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) & 1)


def _info_list(manifest: dict[str, Any]) -> bytes:
    comment = _comment(manifest).replace(f"'{PNG_KEY}'", f"the '{WAV_CHUNK.decode()}' chunk")
    fields = [(b"ICMT", comment), (b"ISFT", _software())]
    return _chunk(b"LIST", b"INFO" + b"".join(_chunk(i, text.encode("utf-8") + b"\0") for i, text in fields))


def _riff_chunks(blob: bytes, strict: bool = True) -> list[tuple[bytes, int, int]]:
    """(id, payload start, payload size) of each top-level chunk of a RIFF/WAVE file. Not strict: a
    chunk that runs past the end (a truncated or streamed file) ends the list instead of raising."""
    chunks, pos = [], 12
    while pos + 8 <= len(blob):
        chunk_id, size = blob[pos : pos + 4], struct.unpack("<I", blob[pos + 4 : pos + 8])[0]
        if pos + 8 + size > len(blob):
            if not strict:
                break
            raise ValueError(f"chunk {chunk_id!r} runs past the end of the file")
        chunks.append((chunk_id, pos + 8, size))
        pos += 8 + size + (size & 1)
    return chunks


def write_wav(path: str | Path, audio: np.ndarray, sample_rate: int, manifest: dict[str, Any]) -> Path:
    """Write mono float audio as 16-bit PCM WAV with `manifest` inside; atomic. Samples are clipped to
    [-1, 1] first (16-bit PCM cannot hold more)."""
    samples = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)

    def write(tmp: Path) -> None:
        sf.write(tmp, samples, sample_rate, subtype="PCM_16", format="WAV")
        blob = tmp.read_bytes()
        end = max(start + size + (size & 1) for _, start, size in _riff_chunks(blob))
        extra = _info_list(manifest) + _chunk(WAV_CHUNK, json.dumps(manifest, ensure_ascii=False,
                                                                    default=str).encode("utf-8"))
        body = blob[12:end] + extra
        tmp.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)

    return atomic_write(Path(path), write)


def write_midi(path: str | Path, midi: bytes, manifest: dict[str, Any]) -> Path:
    """Write a Standard MIDI file (bytes) with `manifest` in meta events at the start of its first track."""
    import io

    import mido

    song = mido.MidiFile(file=io.BytesIO(midi))
    track = song.tracks[0]
    text = PNG_KEY + " " + json.dumps(manifest, ensure_ascii=True, default=str)
    track.insert(0, mido.MetaMessage("text", text=text, time=0))
    track.insert(0, mido.MetaMessage("copyright", text=_comment(manifest).encode("ascii", "replace").decode(),
                                     time=0))
    return atomic_write(Path(path), lambda tmp: song.save(str(tmp)))


def _midi_manifest(path: Path) -> dict[str, Any] | None:
    import mido

    try:
        song = mido.MidiFile(str(path))
    except (OSError, EOFError, ValueError, KeyError, IndexError) as e:
        raise DataError(f"'{path}' is a damaged MIDI file ({e}); re-export it") from None
    for track in song.tracks[:1]:
        for message in track:
            if message.is_meta and message.type == "text" and message.text.startswith(PNG_KEY + " "):
                return _parse(message.text[len(PNG_KEY) + 1:], "MIDI text event", path)
    return None


def _parse(raw: bytes | str, where: str, path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"the provenance manifest in '{path}' ({where}) is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise DataError(f"the provenance manifest in '{path}' ({where}) is not a JSON object")
    return manifest


def read_manifest(path: str | Path) -> dict[str, Any] | None:
    """The manifest stored inside a PNG, WAV or MIDI file; None when the file holds none or is another kind
    of file. Raises DataError (one line) when the file cannot be read, is a damaged PNG, or its
    manifest is not a JSON object."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(12)
    except FileNotFoundError:
        raise DataError(f"'{path}' does not exist; check the path") from None
    except OSError as e:
        raise DataError(f"cannot read '{path}': {e.strerror}; check that it is a readable file") from None
    if head.startswith(PNG_MAGIC):
        try:
            with Image.open(path) as img:
                text = img.text  # reads every text chunk, also those after the pixels
        except (OSError, SyntaxError, ValueError, UnidentifiedImageError) as e:
            raise DataError(f"'{path}' is a damaged PNG ({e}); re-export it") from None
        return _parse(str(text[PNG_KEY]), f"PNG chunk {PNG_KEY}", path) if PNG_KEY in text else None
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        blob = path.read_bytes()
        for chunk_id, start, size in _riff_chunks(blob, strict=False):
            if chunk_id == WAV_CHUNK:
                return _parse(blob[start : start + size], f"WAV chunk {WAV_CHUNK.decode()}", path)
    if head.startswith(MIDI_MAGIC):
        return _midi_manifest(path)
    return None
