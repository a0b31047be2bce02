"""No weights file may run code: planted pickles are refused and nothing they name executes."""

import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from brainmri.config import ModelConfig
from brainmri.errors import CheckpointError
from brainmri.models import build_model
from brainmri.weights import load_state_dict_file, verify_checkpoint_folder


class Exploit:
    """Unpickling this would create a marker file (standing in for any code at all)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant(path, marker):
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": Exploit(str(marker))}}, f)
    return path


def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "evil.pth", marker)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pth.*nothing in it was run"):
        load_state_dict_file(evil)
    assert not marker.exists()


def test_malicious_pretrained_file_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "resnet18.pth", marker)
    with pytest.raises(CheckpointError, match="refusing to load"):
        build_model(ModelConfig(name="resnet18", pretrained_file=str(evil)), 3, 64)
    assert not marker.exists()


def test_planted_file_in_checkpoint_folder_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "epoch_0001"
    folder.mkdir()
    torch.save({"ok": torch.zeros(2)}, folder / "optimizer.bin")
    verify_checkpoint_folder(folder)  # plain tensors pass
    plant(folder / "random_states_0.pkl", marker)
    with pytest.raises(CheckpointError, match="random_states_0.pkl"):
        verify_checkpoint_folder(folder)
    assert not marker.exists()


def test_plain_state_dicts_load(tmp_path):
    model = torch.nn.Linear(3, 2)
    torch.save(model.state_dict(), tmp_path / "plain.pth")
    torch.save({"model": model.state_dict(), "epoch": 3}, tmp_path / "wrapped.pt")
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for name in ("plain.pth", "wrapped.pt", "w.safetensors"):
        state = load_state_dict_file(tmp_path / name)
        assert set(state) == {"weight", "bias"} and torch.equal(state["weight"], model.weight.detach())
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_state_dict_file(tmp_path / "junk.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "missing.pth")
