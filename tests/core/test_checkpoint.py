import json
import pickle
import struct
import zipfile

import pytest
import torch

from muselab.core.checkpoint import load_into, load_tensors, read_metadata, save_tensors, weights_fingerprint
from muselab.core.errors import CheckpointError


def test_round_trip_keeps_values_and_metadata(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(tmp_path / "w.safetensors", tensors, metadata={"step": "7"})
    loaded = load_tensors(tmp_path / "w.safetensors")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["b"], tensors["b"])
    assert read_metadata(tmp_path / "w.safetensors") == {"step": "7"}


def test_tied_weights_can_be_saved(tmp_path):
    shared = torch.randn(4, 4)
    save_tensors(tmp_path / "w.safetensors", {"x": shared, "y": shared})
    assert torch.equal(load_tensors(tmp_path / "w.safetensors")["y"], shared)


def test_pickle_is_refused_without_unpickling(tmp_path):
    path = tmp_path / "model.safetensors"

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    path.write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="pickle"):
        load_tensors(path)


def test_torch_save_zip_is_refused(tmp_path):
    path = tmp_path / "model.safetensors"
    torch.save({"a": torch.zeros(2)}, path)
    assert zipfile.is_zipfile(path)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_tensors(path)


def test_truncated_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(CheckpointError, match="truncated"):
        load_tensors(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 3, b"hello world, not weights"])
def test_garbage_is_refused(tmp_path, content):
    path = tmp_path / "w.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError):
        load_tensors(path)


def _rewrite_header(path, change):
    """Replace the JSON header of a safetensors file by change(header), keeping the data bytes."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    blob = json.dumps(change(json.loads(raw[8:8 + length]))).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length:])


def _overlap(header):
    header["b"]["data_offsets"] = header["a"]["data_offsets"]
    header["b"]["shape"], header["b"]["dtype"] = header["a"]["shape"], header["a"]["dtype"]
    return header


def _past_end(header):
    last = max(("a", "b"), key=lambda name: header[name]["data_offsets"][1])
    start, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [start, end + 400]
    header[last]["shape"] = [(end + 400 - start) // (8 if header[last]["dtype"] == "I64" else 4)]
    return header


@pytest.mark.parametrize(("change", "expected"), [
    (lambda h: [h], "header is a JSON list, not an object"),
    (lambda h: {**h, "a": "x"}, "entry of tensor 'a' is not an object"),
    (lambda h: {**h, "a": {**h["a"], "dtype": {"F32": 1}}}, "unknown dtype"),
    (lambda h: {**h, "a": {**h["a"], "shape": [3, -4]}}, "bad shape"),
    (lambda h: {**h, "a": {**h["a"], "data_offsets": [8, 0]}}, "bad data offsets"),
    (lambda h: {**h, "a": {**h["a"], "shape": [4, 4]}}, "needs 64"),
    (_overlap, "overlaps another"),
    (_past_end, "truncated"),
    (lambda h: {**h, "__metadata__": {"step": 7}}, "__metadata__ is not an object of strings"),
])
def test_damaged_header_is_named_before_loading(tmp_path, change, expected):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.randn(3, 4), "b": torch.arange(5)}, metadata={"step": "7"})
    _rewrite_header(path, change)
    for read in (load_tensors, read_metadata):
        with pytest.raises(CheckpointError, match=expected) as err:
            read(path)
        assert "\n" not in str(err.value)


def test_header_length_beyond_the_file_is_refused(tmp_path):
    path = tmp_path / "w.safetensors"
    save_tensors(path, {"a": torch.randn(3)})
    path.write_bytes(struct.pack("<Q", 2**40) + path.read_bytes()[8:])
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_tensors(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        load_tensors(tmp_path / "nope.safetensors")


def test_load_into_reports_mismatched_shapes_by_name():
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match=r"weight \(2, 4\) vs \(2, 3\)"):
        load_into(model, {"weight": torch.zeros(2, 4), "bias": torch.zeros(2)}, "src")


def test_fingerprint_tracks_values():
    a = {"w": torch.zeros(3)}
    assert weights_fingerprint(a) == weights_fingerprint({"w": torch.zeros(3)})
    assert weights_fingerprint(a) != weights_fingerprint({"w": torch.tensor([0.0, 0.0, 1e-7])})
