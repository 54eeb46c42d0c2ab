"""PyTorch weight port, checked against RobustBench's own architecture definitions.

RobustBench is installed with --no-deps (its package __init__ needs torchvision, which has
no CPU build here), so its architecture files are loaded by path; they import only torch.
"""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt; the port "
                                            "tests compare against PyTorch")

from mixacm_jax import models  # noqa: E402
from mixacm_jax.errors import CheckpointError  # noqa: E402
from mixacm_jax.port import convert, to_orbax  # noqa: E402
from tools import robustbench_zoo as robustbench  # noqa: E402
from mixacm_jax.runtime import checkpoint  # noqa: E402
from mixacm_jax.training import teacher as teacher_lib, train  # noqa: E402
from conftest import robustbench_architecture  # noqa: E402


def _randomise(net, seed=0):
  return robustbench.randomise_batchnorm(net, seed)


def _nets():
  wrn, resnet = robustbench_architecture("wide_resnet"), robustbench_architecture("resnet")
  dm = robustbench_architecture("dm_wide_resnet")
  robustbench.zoo_entries("cifar10")  # the zoo's own subclasses, e.g. Ding et al.'s
  zoo10 = sys.modules["robustbench.model_zoo.cifar10"]
  robust_wrn = robustbench_architecture("robust_wide_resnet")
  boosting, paf = robustbench_architecture("boosting_wide_resnet"), robustbench_architecture("paf_wide_resnet")
  return {
      "wrn_per_stage": (lambda: robust_wrn.RobustWideResNet(
          channel_configs=[8, 16, 32, 24], depth_configs=[1, 2, 1]), "wrn",
          dict(stem_width=8, stage_widths=(16, 32, 24), stage_blocks=(1, 2, 1)),
          {"stem": "stem_conv", "stage2": "blocks.1", "stage3": "blocks.2"}),
      "wrn_cosine_head": (lambda: boosting.BoostingWideResNet(depth=10, widen_factor=1), "wrn",
                          dict(depth=10, widen_factor=1, cosine_head=True),  # mu/sigma: file
                          {"stage3": "block3"}),
      "wrn_pssilu": (lambda: robustbench.randomise_learned_activations(paf.PAF_WideResNet(
          paf.PSSiLU(), depth=10, widen_factor=1), 3), "wrn",
          dict(depth=10, widen_factor=1, activation="pssilu"), {"stage1": "block1"}),
      "resnet_preact_bottleneck": (
          lambda: resnet.ResNet(resnet.BottleneckChen2020AdversarialNet, [1, 1, 1, 1]),
          "preact_bottleneck_resnet50", dict(stage_sizes=(1, 1, 1, 1)),
          {"stage2": "layer2", "stage4": "layer4"}),
      "resnet_bottleneck": (lambda: resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1]), "resnet50",
                            dict(stage_sizes=(1, 1, 1, 1)),
                            {"stage1": "layer1", "stage4": "layer4"}),
      "wrn_per_image": (lambda: zoo10.Ding2020MMANet(depth=10, widen_factor=1), "wrn",
                        dict(depth=10, widen_factor=1, per_image_standardization=True),
                        {"stage2": "block2"}),
      "dm_wrn10_2": (lambda: dm.DMWideResNet(depth=10, width=2, activation_fn=dm.Swish),
                     "dm_wrn", dict(depth=10, widen_factor=2),
                     {"stem": "init_conv", "stage1": "layer.0", "stage2": "layer.1",
                      "stage3": "layer.2"}),
      "dm_preact18": (lambda: dm.DMPreActResNet(depth=18, activation_fn=dm.Swish,
                                                use_cuda=False), "dm_preact_resnet18", {},
                      {"stem": "conv_2d", "stage2": "layer_1", "stage4": "layer_3"}),
      "wrn16_2": (lambda: wrn.WideResNet(depth=16, widen_factor=2), "wrn",
                  dict(depth=16, widen_factor=2),
                  {"stem": "conv1", "stage1": "block1", "stage2": "block2", "stage3": "block3"}),
      "resnet18": (resnet.ResNet18, "resnet18", {},
                   {"stage1": "layer1", "stage2": "layer2", "stage3": "layer3", "stage4": "layer4"}),
      "resnet34": (resnet.ResNet34, "resnet34", {}, {"stage4": "layer4"}),
      "preact18": (resnet.PreActResNet18, "preact_resnet18",
                   dict(final_bn=False, shortcut_from_preact=False),
                   {"stem": "conv1", "stage2": "layer2", "stage4": "layer4"}),
      "preact18_rice": (lambda: resnet.PreActResNet(resnet.PreActBlockV2, [2, 2, 2, 2],
                                                    bn_before_fc=True), "preact_resnet18", {},
                        {"stage1": "layer1", "stage4": "layer4"}),
  }


@pytest.mark.parametrize("name", ["wrn16_2", "resnet18", "resnet34", "preact18", "preact18_rice",
                                  "dm_wrn10_2", "dm_preact18", "resnet_bottleneck",
                                  "wrn_per_image", "wrn_per_stage", "wrn_cosine_head",
                                  "wrn_pssilu", "resnet_preact_bottleneck"])
def test_logits_and_stages_match_robustbench(name, tmp_path):
  factory, arch, kwargs, stages = _nets()[name]
  net = _randomise(factory(), seed=len(name))
  x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
  acts = {}
  for ours, theirs in stages.items():
    net.get_submodule(theirs).register_forward_hook(
        lambda m, i, o, ours=ours: acts.__setitem__(ours, o.detach().numpy()))
  with torch.no_grad():
    ref = net(x).numpy()
  # What real files look like: DataParallel prefixes inside a nested dict.
  path = str(tmp_path / "w.pt")
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
              "epoch": 7}, path)
  model, variables, _ = convert.load_pytorch_weights(path, arch, **kwargs)
  x_nhwc = jnp.asarray(x.numpy().transpose(0, 2, 3, 1))
  logits, feats, _ = models.apply_model(model, variables, x_nhwc, train=False,
                                        names=list(stages))
  assert float(np.max(np.abs(np.asarray(logits) - ref))) <= 1e-4
  np.testing.assert_array_equal(np.argmax(logits, -1), np.argmax(ref, -1))
  for ours in stages:
    np.testing.assert_allclose(np.asarray(feats[ours]), acts[ours].transpose(0, 2, 3, 1),
                               atol=1e-4, rtol=1e-4)


def test_safetensors_fp16_and_normalisation_buffers(tmp_path):
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  resnet = robustbench_architecture("resnet")
  net = _randomise(resnet.PreActResNet(resnet.PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True))
  mean, std = torch.tensor([0.49, 0.48, 0.45]), torch.tensor([0.25, 0.24, 0.26])
  x = torch.rand(3, 3, 32, 32)
  with torch.no_grad():
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in net.state_dict().items()}
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in half.items()})
    ref = net((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)).numpy()
  half["mu"], half["sigma"] = mean.view(1, 3, 1, 1), std.view(1, 3, 1, 1)
  path = str(tmp_path / "w.safetensors")
  save_file({k: v.contiguous() for k, v in half.items()}, path)
  model, variables, norm = convert.load_pytorch_weights(path, "preact_resnet18")
  assert norm["mean"] == pytest.approx(tuple(mean.tolist()))
  out = model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  assert float(np.max(np.abs(np.asarray(out) - ref))) <= 1e-4


def test_mismatched_weights_list_every_problem_and_write_nothing(tmp_path):
  resnet = robustbench_architecture("resnet")
  state = resnet.ResNet18().state_dict()
  del state["layer2.0.conv1.weight"]
  state["layer9.0.conv1.weight"] = torch.zeros(1)
  state["linear.weight"] = torch.zeros(10, 256)
  path = str(tmp_path / "bad.pt")
  torch.save(state, path)
  cfg = _convert_cfg(path, "resnet18")
  with pytest.raises(CheckpointError) as err:
    to_orbax.to_checkpoint(cfg, str(tmp_path / "out"))
  msg = str(err.value)
  assert "1 missing Flax entries: params/layer2_0/conv1/kernel" in msg
  assert "1 unexpected PyTorch keys: layer9.0.conv1.weight" in msg
  assert "1 shape mismatches: linear.weight (256, 10) -> params/fc/kernel (512, 10)" in msg
  assert not (tmp_path / "out").exists()


def _convert_cfg(source, arch, **kwargs):
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  cfg = default.get_config().convert
  cfg.source, cfg.arch = source, arch
  cfg.kwargs = kwargs
  return cfg


def test_convert_writes_a_teacher_checkpoint(tmp_path):
  wrn = robustbench_architecture("wide_resnet")
  net = _randomise(wrn.WideResNet(depth=10, widen_factor=1, sub_block1=True))
  path = str(tmp_path / "trades.pth")
  torch.save(net.state_dict(), path)  # TRADES checkpoints carry the unused sub_block1
  info = to_orbax.to_checkpoint(_convert_cfg(path, "wrn", depth=10, widen_factor=1),
                         str(tmp_path / "out"))
  assert info["num_classes"] == 10
  from mixacm_jax.configs import default  # pylint: disable=g-import-not-at-top
  teacher_cfg = default.get_config().teacher
  teacher_cfg.model.name = "wrn"
  teacher_cfg.model.kwargs = {"depth": 10, "widen_factor": 1}
  teacher = teacher_lib.load_teacher(teacher_cfg, 10, (32, 32, 3), path=str(tmp_path / "out"))
  x = torch.rand(2, 3, 32, 32)
  with torch.no_grad():
    ref = net(x).numpy()
  out = teacher.model.apply(teacher.variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  assert float(np.max(np.abs(np.asarray(out) - ref))) <= 1e-4


def test_round_trip_train_export_load_into_robustbench(tmp_path, tiny_config):
  """A WRN trained a few steps here, exported, loaded strictly into RobustBench's class."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  wrn = robustbench_architecture("wide_resnet")
  config = tiny_config
  config.data.name = "cifar10"
  config.model.name = "wrn"
  config.model.kwargs = {"depth": 10, "widen_factor": 1}
  config.optim.num_steps = 3
  config.train_evals.pgd.attacks, config.checkpoint.best_metric = "clean", "clean_accuracy"
  with tfds.testing.mock_data(num_examples=64):
    result = train.train_and_evaluate(config, str(tmp_path / "run"))
  model = models.create_model("wrn", num_classes=10, depth=10, widen_factor=1)
  variables = {"params": result["state"].params["model"],
               "batch_stats": result["state"].batch_stats}
  init = models.init_variables(model, jax.random.PRNGKey(config.seed), (32, 32, 3))
  assert not np.allclose(init["params"]["fc"]["kernel"], variables["params"]["fc"]["kernel"])
  for suffix in (".pt", ".safetensors"):
    path = str(tmp_path / f"student{suffix}")
    convert.export(variables, model, path)
    net = wrn.WideResNet(depth=10, widen_factor=1)
    if suffix == ".pt":
      state = torch.load(path, weights_only=True)
    else:
      from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
      state = load_file(path)
    net.load_state_dict(state, strict=True)
    x = np.random.RandomState(0).rand(4, 32, 32, 3).astype(np.float32)
    with torch.no_grad():
      ref = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    ours = model.apply(variables, jnp.asarray(x))
    assert float(np.max(np.abs(np.asarray(ours) - ref))) <= 1e-4


def test_convert_mode_on_the_command_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  resnet = robustbench_architecture("resnet")
  torch.save(_randomise(resnet.ResNet18()).state_dict(), str(tmp_path / "r18.pt"))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "run.py"), "--mode=convert",
         f"--workdir={tmp_path / 'out'}", "--config.convert.arch=resnet18"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="")
  missing = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=env)
  assert missing.returncode == 2 and "--config.convert.source=<file" in missing.stderr
  ok = subprocess.run(cmd + [f"--config.convert.source={tmp_path / 'r18.pt'}"],
                      capture_output=True, text=True, cwd=root, env=env)
  assert ok.returncode == 0, ok.stderr[-2000:]
  assert "resnet18, 10 classes" in ok.stdout
  assert os.path.isdir(tmp_path / "out" / "checkpoints" / "0")
  again = subprocess.run(cmd + [f"--config.convert.source={tmp_path / 'r18.pt'}"],
                         capture_output=True, text=True, cwd=root, env=env)
  assert again.returncode == 2 and "already holds checkpoints" in again.stderr


def test_convert_any_depth_wrn_from_the_command_line(tmp_path):
  """`--config.convert.kwargs.<field>` reaches the architecture (issue 14): a WRN-10-1 file
  converts, its logits match RobustBench's module, and a field the architecture does not
  take is one clear line naming the fields it does."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  wrn = robustbench_architecture("wide_resnet")
  net = _randomise(wrn.WideResNet(depth=10, widen_factor=1))
  torch.save(net.state_dict(), str(tmp_path / "wrn10_1.pt"))
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "run.py"), "--mode=convert",
         "--config.convert.arch=wrn", f"--config.convert.source={tmp_path / 'wrn10_1.pt'}",
         "--config.convert.kwargs.depth=10", "--config.convert.kwargs.widen_factor=1"]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS="")
  ok = subprocess.run(cmd + [f"--workdir={tmp_path / 'out'}"], capture_output=True, text=True,
                      cwd=root, env=env)
  assert ok.returncode == 0, ok.stderr[-2000:]
  model = models.create_model("wrn", num_classes=10, depth=10, widen_factor=1)
  variables = checkpoint.load_variables(model, (32, 32, 3), str(tmp_path / "out"))
  x = np.random.RandomState(0).rand(4, 32, 32, 3).astype(np.float32)
  with torch.no_grad():
    ref = net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  assert float(np.max(np.abs(np.asarray(model.apply(variables, jnp.asarray(x))) - ref))) <= 1e-4
  bad = subprocess.run(cmd + [f"--workdir={tmp_path / 'bad'}",
                              "--config.convert.kwargs.final_bn=False"],
                       capture_output=True, text=True, cwd=root, env=env)
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert ("architecture 'wrn' takes no 'final_bn'; its fields: activation, bn_axis_name, "
          "cosine_head, depth, mean_sparse, per_image_standardization, se_ratio, stage_blocks, "
          "stage_widths, stem_width, tf_same_padding, widen_factor") in bad.stderr
