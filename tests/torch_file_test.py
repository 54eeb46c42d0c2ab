"""Reading .pt files without executing them: tensors rebuilt exactly (zip and legacy formats,
every dtype, strided views), non-tensor objects inert, code payloads never run, and files that
are not checkpoints named for what they are."""
import argparse
import os
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the reference files are written by torch.save")

from mixacm_jax.errors import CheckpointError  # noqa: E402
from mixacm_jax.port import convert, state_dict as sd_lib, torch_file  # noqa: E402


@pytest.mark.parametrize("legacy", [False, True])
def test_tensors_come_back_exactly_in_both_formats_and_every_dtype(tmp_path, legacy):
  g = torch.Generator().manual_seed(0)
  base = torch.randn(6, 5, generator=g)
  tensors = {
      "float32": base, "float16": base.half(), "float64": base.double(),
      "bfloat16": base.bfloat16(), "int64": torch.arange(7), "int32": torch.arange(3).int(),
      "uint8": torch.arange(4).to(torch.uint8), "bool": base > 0,
      "transposed": base.t(), "sliced": base[1:4, ::2], "scalar": torch.tensor(3.5),
      "conv": torch.randn(4, 3, 3, 3, generator=g).permute(0, 2, 3, 1),
  }
  path = str(tmp_path / "w.pt")
  torch.save(tensors, path, _use_new_zipfile_serialization=not legacy)
  obj, placeholders = torch_file.load(path)
  assert not placeholders
  for name, t in tensors.items():
    expected = t.float().numpy() if name == "bfloat16" else t.numpy()
    got = obj[name]
    assert got.shape == expected.shape, name
    np.testing.assert_array_equal(got, expected, err_msg=name)
    if name != "bfloat16":
      assert got.dtype == expected.dtype, name


def test_objects_beside_the_weights_are_inert_and_the_weights_load(tmp_path):
  """Real checkpoints pickle epoch counters, NumPy scalars, argparse namespaces and optimizer
  state next to the state_dict; torch.load(weights_only=True) refuses such files."""
  net = torch.nn.Linear(3, 2)
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
  net(torch.randn(4, 3)).sum().backward()
  opt.step()
  path = str(tmp_path / "ckpt.pth")
  torch.save({"epoch": 7, "acc": np.float64(0.93), "args": argparse.Namespace(lr=0.1, arch="x"),
              "state_dict": net.state_dict(), "optimizer": opt.state_dict()}, path)
  with pytest.raises(pickle.UnpicklingError):
    torch.load(path, weights_only=True)
  weights = sd_lib.read_weight_file(path)
  assert set(weights) == {"weight", "bias"}
  np.testing.assert_array_equal(weights["weight"], net.weight.detach().numpy())
  _, placeholders = torch_file.load(path)
  assert "argparse.Namespace" in placeholders


def test_a_code_payload_never_runs(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  beside = str(tmp_path / "beside.pt")  # a payload next to real weights: weights load
  torch.save({"state_dict": {"w": torch.ones(2)}, "note": Evil()}, beside)
  assert set(sd_lib.read_weight_file(beside)) == {"w"}
  alone = str(tmp_path / "alone.pt")  # nothing but the payload: one clear line
  with open(alone, "wb") as f:
    pickle.dump({"state_dict": Evil()}, f)
  with pytest.raises(CheckpointError, match=r"holds no tensors.*(posix|os)\.system, none of "
                                            "which was run"):
    convert.load_pytorch_weights(alone, "resnet18")
  assert not marker.exists()


def test_files_that_are_no_checkpoint_say_what_they_are(tmp_path):
  html = tmp_path / "Zhang2019Theoretically.pt"
  html.write_text("<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning"
                  "</title></head><body>...</body></html>")
  with pytest.raises(CheckpointError, match=r"is an HTML page \(\d+ bytes\), not a PyTorch "
                                            "checkpoint: the download did not complete"):
    sd_lib.read_weight_file(str(html))
  empty = tmp_path / "empty.pt"
  empty.write_bytes(b"")
  with pytest.raises(CheckpointError, match=r"is an empty file \(0 bytes\)"):
    sd_lib.read_weight_file(str(empty))


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_file_is_called_truncated(tmp_path, legacy):
  path = str(tmp_path / "whole.pt")
  torch.save({"w": torch.randn(64, 64)}, path, _use_new_zipfile_serialization=not legacy)
  data = open(path, "rb").read()
  cut = str(tmp_path / "half.pt")
  with open(cut, "wb") as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(CheckpointError, match="half.pt is truncated or corrupt") as err:
    convert.load_pytorch_weights(cut, "resnet18")
  assert "download or save it again" in str(err.value)


def test_robustbench_nesting_and_wrapper_prefixes_are_unwrapped(tmp_path):
  """'last' (the Kireev / Andriushchenko files), 'state_dict', `module.` (DataParallel) and
  `model.` (Chen2020Efficient), as RobustBench's own loader unwraps them."""
  w = torch.randn(3, 2)
  for name, obj in {"last": {"last": {"fc.weight": w}, "best": {"fc.weight": w + 1}},
                    "module": {"state_dict": {"module.fc.weight": w}},
                    "model": {"model.fc.weight": w, "model.mu": torch.zeros(1, 3, 1, 1)}}.items():
    path = str(tmp_path / f"{name}.pt")
    torch.save(obj, path)
    state, norm = sd_lib.clean_state_dict(sd_lib.read_weight_file(path))
    assert list(state) == ["fc.weight"], name
    np.testing.assert_array_equal(state["fc.weight"], w.numpy())
  assert norm["mean"] == (0.0, 0.0, 0.0)
