import pickle
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
