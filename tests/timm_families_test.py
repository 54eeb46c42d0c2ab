"""The newer zoo's families in Flax, timm's ConvNeXt, Vision Transformer, Swin Transformer and
XCiT and Huang et al.'s RobustResNet: logits against timm's and RobustBench's own modules (the
ConvStem variants and robust_resnet.py ship in the pinned wheel too), and a ConvNeXt, a ViT, a
Swin and an XCiT teacher distilled into a ResNet student with MixACM."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.port import convert

torch = pytest.importorskip("torch", reason="the reference is timm's PyTorch module")
from conftest import logits_against_torch  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position
from tools import robustbench_zoo, torch_reference  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

torch_reference.torchvision_models()  # timm imports torchvision's transforms
timm = pytest.importorskip("timm", reason="the reference is timm's ConvNeXt (port extra)")

TINY = dict(depths=(1, 2, 1, 1), dims=(16, 24, 32, 40))
TINY_VIT = dict(patch_size=16, width=32, depth=4, heads=4)
TINY_SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), heads=(2, 2, 4, 4))


def _tiny_timm_swin(window: int, side: int):
  torch.manual_seed(0)
  return robustbench_zoo.randomise_initial_constants(timm.models.swin_transformer.SwinTransformer(
      num_classes=10, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4),
      window_size=window, img_size=side).eval())


# 32 px, window 4: shifted windows in stage 1, shrunk ones after; 64 px, window 7: a 16-wide
# grid padded to 21, shifted, with its region masks.
@pytest.mark.parametrize("window,side", [(4, 32), (7, 64)])
def test_swin_gives_timms_logits_and_exports_its_state_dict(window, side):
  net = _tiny_timm_swin(window, side)
  model, variables, x, out, ref = logits_against_torch(net, "swin", side, window=window,
                                                       **TINY_SWIN)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in
                       convert.flax_to_torch(variables, model).items()}, strict=True)
  _, feats, _ = models.apply_model(model, variables, x, train=False,
                                   names=("stem", "stage1", "stage2", "stage3", "stage4"))
  assert [feats[f"stage{i}"].shape[1] for i in range(1, 5)] == [side // 4 // 2**i
                                                                for i in range(4)]


TINY_XCIT = dict(embed_dim=32, depth=4, heads=4)


# 16-pixel patches at 64 px; RobustBench's CIFAR stem (16's convolutions, the first two at
# stride 1: patches of 4) at 32 px; 8-pixel patches (three convolutions) with only the class
# token normalised in the class-attention blocks.
@pytest.mark.parametrize("side,strides,tokens_norm", [(64, (2, 2, 2, 2), True),
                                                      (32, (1, 1, 2, 2), True),
                                                      (32, (2, 2, 2), False)])
def test_xcit_gives_timms_logits_and_exports_its_state_dict(side, strides, tokens_norm):
  torch.manual_seed(0)
  net = timm.models.xcit.Xcit(num_classes=10, patch_size=8 if len(strides) == 3 else 16,
                              embed_dim=32, depth=4, num_heads=4, eta=1.0,
                              tokens_norm=tokens_norm, img_size=side)
  for i, stride in enumerate(strides):  # as RobustBench's adapt_model_patches
    net.patch_embed.proj[2 * i][0].stride = (stride, stride)
  net = robustbench_zoo.randomise_initial_constants(robustbench_zoo.randomise_batchnorm(net))
  model, variables, x, out, ref = logits_against_torch(
      net.eval(), "xcit", side, stem_strides=strides, tokens_norm=tokens_norm, **TINY_XCIT)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in
                       convert.flax_to_torch(variables, model).items()}, strict=True)
  _, feats, _ = models.apply_model(model, variables, x, train=False, names=("stage4",))
  assert feats["stage4"].shape[1:] == (side // 2 ** len([s for s in strides if s == 2]),) * 2 + (
      32,)


def test_mean_sparse_layer_against_numpy_and_as_identity_at_threshold_zero():
  from mixacm_jax.models import layers  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 4, 4, 8)).astype(np.float32)
  stats = {"mean": rng.normal(size=8).astype(np.float32) * 0.3,
           "var": (0.5 + rng.random(8)).astype(np.float32), "threshold": np.float32(0.7)}
  out = layers.MeanSparse().apply({"batch_stats": stats}, x)
  crop = 0.7 * np.sqrt(stats["var"])
  expected = np.where(np.abs(x - stats["mean"]) < crop, stats["mean"], x)
  assert 0 < np.mean(expected != x) < 1  # some values replaced, some kept
  np.testing.assert_array_equal(np.asarray(out), expected)
  # A MeanSparse WideResNet whose thresholds are 0 is the WideResNet.
  sparse = models.create_model("dm_wrn", num_classes=10, depth=10, widen_factor=1,
                               mean_sparse=True)
  plain = models.create_model("dm_wrn", num_classes=10, depth=10, widen_factor=1)
  variables = models.init_variables(sparse, jax.random.PRNGKey(0), (32, 32, 3))
  stripped = {"params": variables["params"], "batch_stats": {
      k: {n: s for n, s in v.items() if not n.startswith("sparse")}
      for k, v in variables["batch_stats"].items() if not k.startswith("sparse")}}
  x = rng.random((2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(sparse.apply(variables, x), plain.apply(stripped, x), atol=1e-6)


def test_mean_sparse_ra_wide_resnet_gives_robustbenchs_stored_logits():
  """RobustBench's MeanSparse RaWideResNet class (main branch only), tiny, thresholds 0.5,
  squeeze-and-excitation, seeded weights: its logits stored by tools/meansparse_reference.py."""
  data = np.load(os.path.join(os.path.dirname(__file__), "data", "meansparse_ra_wrn_tiny.npz"))
  state = {k.removeprefix("state/"): data[k] for k in data.files if k.startswith("state/")}
  assert {float(v) for k, v in state.items() if k.endswith("threshold")} == {0.5}
  from mixacm_jax.port import state_dict  # pylint: disable=g-import-not-at-top
  model = models.create_model("dm_wrn", num_classes=10, stem_width=8, stage_widths=(8, 16, 32),
                              stage_blocks=(1, 2, 1), se_ratio=0.25, mean_sparse=True)
  variables = convert.torch_to_flax(state_dict.clean_state_dict(state)[0], model, (32, 32, 3))
  out = np.asarray(model.apply(variables, data["x"].transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(out, data["logits"], atol=1e-4, rtol=0)


MEAN_SPARSE_CHECK = """
import sys
import numpy as np, torch
sys.path.insert(0, "tests")
from tools import robustbench_zoo
robustbench_zoo.zoo_package(sys.argv[1])
import importlib
from conftest import logits_against_torch
worst = 0.0
for module, cls in (("Meansparse_wrn_94_16", "MeanSparse_DMWideResNet"),
                    ("Meansparse_wrn_70_16", "DMWideResNet")):
  for depth, width in ((10, 1), (16, 2)):
    torch.manual_seed(0)
    net = getattr(importlib.import_module(
        "robustbench.model_zoo.architectures." + module), cls)(
            num_classes=10, depth=depth, width=width, activation_fn=torch.nn.SiLU)
    net = robustbench_zoo.randomise_initial_constants(robustbench_zoo.randomise_batchnorm(net))
    *_, ours, ref = logits_against_torch(net, "dm_wrn", 32, depth=depth, widen_factor=width,
                                         mean_sparse=True)
    worst = max(worst, float(np.abs(ours - ref).max()))
ra = importlib.import_module("robustbench.model_zoo.architectures.Meansparse_ra_wrn_70_16")
torch.manual_seed(0)  # RobustArch's RaWideResNet with MeanSparse and squeeze-and-excitation
net = ra.NormalizedWideResNet(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
                              stem_width=16, depth=[2, 2, 1], stage_width=[16, 32, 64],
                              groups=[1, 1, 1], activation_fn=torch.nn.SiLU, se_ratio=0.25,
                              se_activation=torch.nn.ReLU, se_order=2)
net = robustbench_zoo.randomise_initial_constants(robustbench_zoo.randomise_batchnorm(net))
*_, ours, ref = logits_against_torch(net, "dm_wrn", 32, stem_width=16, stage_widths=(16, 32, 64),
                                     stage_blocks=(2, 2, 1), se_ratio=0.25, mean_sparse=True)
worst = max(worst, float(np.abs(ours - ref).max()))
from tools import torch_reference  # timm imports torchvision's transforms
torch_reference.torchvision_models()
import timm
sp = importlib.import_module("robustbench.model_zoo.architectures.sparsified_model")
torch.manual_seed(0)  # the MeanSparse ConvNeXt (its layers sized for ConvNeXt-L's widths)
net = timm.models.convnext.ConvNeXt(num_classes=10, depths=(1, 1, 1, 1),
                                    dims=(192, 384, 768, 1536))
sp.add_custom_layer_imagenet(net, sp.MeanSparse_imagenet, parent_path="", prev_features=None)
net = robustbench_zoo.randomise_initial_constants(net.eval())
*_, ours, ref = logits_against_torch(net, "convnext", 64, depths=(1, 1, 1, 1),
                                     dims=(192, 384, 768, 1536), mean_sparse=True)
worst = max(worst, float(np.abs(ours - ref).max()))
print(worst)
"""


def test_mean_sparse_wide_resnets_give_robustbenchs_logits_with_thresholds_on():
  """The main branch's MeanSparse DM WideResNets, RaWideResNet and ConvNeXt at small sizes,
  thresholds 0.5 (the parity
  tool checks the full-size entries with thresholds 0: a hard threshold turns float32
  rounding near it into jumps)."""
  source = os.environ.get("ROBUSTBENCH_SOURCE")
  if not source:
    pytest.skip("set ROBUSTBENCH_SOURCE to a checkout of RobustBench's main branch (its "
                "MeanSparse modules are not in the pinned wheel; CI has no network)")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run([sys.executable, "-c", MEAN_SPARSE_CHECK, source], cwd=root,
                       capture_output=True, text=True, timeout=900, check=True)
  assert float(out.stdout.strip().splitlines()[-1]) < 1e-4


def test_swin_reads_microsofts_layout_too():
  """RobustBench's MIMIR models use Microsoft's original Swin code: each patch merging saved
  with the stage before it, a bare Linear head, the index and mask buffers saved. The same
  weights in that layout give the same Flax variables."""
  net = _tiny_timm_swin(4, 32)
  timm_state = {k: v.numpy() for k, v in net.state_dict().items()}
  ms_state = {}
  for key, value in timm_state.items():
    parts = key.split(".")
    if parts[0] == "layers" and parts[2] == "downsample":  # to the end of the stage before
      key = ".".join(["layers", str(int(parts[1]) - 1)] + parts[2:])
    ms_state[key.replace("head.fc.", "head.")] = value
  ms_state["layers.0.blocks.1.attn_mask"] = np.zeros((4, 16, 16), np.float32)
  ms_state["layers.0.blocks.0.attn.relative_position_index"] = np.zeros((16, 16), np.int64)
  model = models.create_model("swin", num_classes=10, window=4, **TINY_SWIN)
  from_timm = convert.torch_to_flax(timm_state, model, (32, 32, 3))
  from_ms = convert.torch_to_flax(ms_state, model, (32, 32, 3))
  same = jax.tree_util.tree_map(lambda a, b: bool(np.array_equal(a, b)),
                                        from_timm, from_ms)
  assert all(jax.tree_util.tree_leaves(same))


def test_convnext_gives_timms_logits():
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_initial_constants(
      timm.models.convnext.ConvNeXt(num_classes=10, **TINY).eval())
  model, variables, _, out, ref = logits_against_torch(net, "convnext", 64, **TINY)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  # And back: our export is the state_dict timm's module loads strictly.
  net.load_state_dict({k: torch.from_numpy(v) for k, v in
                       convert.flax_to_torch(variables, model).items()}, strict=True)


def _tiny_timm(family: str, stem):
  """A tiny timm ConvNeXt or ViT with `stem` in place of its own (as RobustBench's
  get_convstem_models builds Singh et al.'s models)."""
  if family == "convnext":
    net = timm.models.convnext.ConvNeXt(num_classes=10, **TINY)
    net.stem = stem
  else:
    net = timm.models.vision_transformer.VisionTransformer(
        img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=4, num_classes=10)
    net.patch_embed.proj = stem
  return net


def test_convstem_variants_give_robustbenchs_logits():
  """Singh et al.'s ConvStem: RobustBench's ConvBlock1 and ConvBlock3 on a tiny timm
  ConvNeXt, its ConvBlock on a tiny ViT (robustbench's convstem_models.py, the same file in
  the pinned wheel and the main branch)."""
  convstem = robustbench_zoo.architecture_module("convstem_models")
  for family, stem, kwargs in (
      ("convnext", convstem.ConvBlock1(8), dict(TINY, stem="convstem", stem_width=8,
                                                stem_layers=2)),
      ("convnext", convstem.ConvBlock3(8), dict(TINY, stem="convstem", stem_width=8,
                                                stem_layers=3)),
      ("vit", convstem.ConvBlock(8, end_siz=4), dict(TINY_VIT, stem="convstem",
                                                      stem_width=8))):
    torch.manual_seed(0)
    net = robustbench_zoo.randomise_initial_constants(_tiny_timm(family, stem).eval())
    *_, out, ref = logits_against_torch(net, family, 64, **kwargs)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0, err_msg=family)


def test_robust_resnet_reads_as_a_per_stage_wide_resnet():
  """Huang et al. 2022's PreActResNet (RobustBench's robust_resnet.py; WRN-A4 at full size):
  a tiny one against the per-stage WideResNet with its layout."""
  robust = robustbench_zoo.architecture_module("robust_resnet")
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_batchnorm(robust.PreActResNet(
      channel_configs=(8, 16, 24, 12), depth_configs=(2, 1, 2),
      activations=("SiLU",) * 3, use_init=False, pre_process=True), 0)
  model, _, _, out, ref = logits_against_torch(
      net, "wrn", 32, stem_width=8, stage_widths=(16, 24, 12), stage_blocks=(2, 1, 2),
      activation="swish")
  assert model.mean == pytest.approx((0.4914, 0.4822, 0.4465))  # its buffers, from the file
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_vit_gives_timms_logits_and_sows_its_patch_grid():
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_initial_constants(
      timm.models.vision_transformer.VisionTransformer(
          img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=4,
          num_classes=10).eval())
  model, variables, x, out, ref = logits_against_torch(net, "vit", 64, **TINY_VIT)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  _, state = model.apply(variables, x, mutable=["intermediates"])
  # Each stage's patch tokens on their 4x4 grid, the class token left out: the last stage
  # is the final block's output (before the final norm) without its first token.
  acts = {}
  net.blocks[-1].register_forward_hook(lambda m, i, o: acts.__setitem__("last", o))
  with torch.no_grad():
    net(torch.from_numpy(x.transpose(0, 3, 1, 2)))
  stage4 = np.asarray(state["intermediates"]["stage4"])
  assert stage4.shape == (2, 4, 4, 32)
  np.testing.assert_allclose(stage4.reshape(2, 16, 32), acts["last"][:, 1:].numpy(),
                             atol=1e-4, rtol=1e-4)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in
                       convert.flax_to_torch(variables, model).items()}, strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch,kwargs", [("convnext", TINY), ("vit", dict(TINY_VIT,
                                                                          patch_size=4)),
                                         ("swin", dict(TINY_SWIN, window=4)),
                                         ("xcit", dict(TINY_XCIT, stem_strides=(1, 1, 2, 2)))])
def test_a_transformer_or_convnext_teacher_distils_into_a_resnet_student(tiny_config, tmp_path,
                                                                      arch, kwargs):
  """Stage by stage (stem, stage1..4): the channel maps pair whatever the spatial sizes."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  from mixacm_jax.training import train  # pylint: disable=g-import-not-at-top
  teacher = tiny_config.copy_and_resolve_references()
  teacher.data.name = "cifar10"
  teacher.model.name = arch
  teacher.model.kwargs = dict(kwargs)
  teacher.optim.num_steps = 1
  with tfds.testing.mock_data(num_examples=32):
    train.train_and_evaluate(teacher, str(tmp_path / "teacher"))
    student = tiny_config.copy_and_resolve_references()
    student.data.name = "cifar10"
    student.model.kwargs.stage_sizes = (1, 1, 1, 1)
    student.objective.name = "mixacm"
    student.objective.mixacm.acm.stages = ("stem", "stage1", "stage2", "stage3", "stage4")
    student.teacher.checkpoint = str(tmp_path / "teacher")
    student.teacher.model.name = arch
    student.teacher.model.kwargs = dict(kwargs)
    student.optim.num_steps = 2
    summary = train.train_and_evaluate(student, str(tmp_path / "student"))
  assert summary["steps"] == 2 and np.isfinite(summary["clean_accuracy"])


@pytest.mark.parametrize("window,side", [(4, 32), (7, 64)])
def test_mean_sparse_swin_gives_robustbenchs_logits_with_thresholds_on(window, side):
  """MeanSparse's own copy of timm's Swin (Amini2024MeanSparse_Swin-L's class, from the
  pinned wheel) at a tiny size: MeanSparse after each residual sum and on the MLP's hidden and
  output, thresholds 0.5 with random statistics; logits and the export back."""
  module = robustbench_zoo.architecture_module("Meansparse_swin_L")
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_initial_constants(module.SwinTransformer(
      num_classes=10, embed_dim=16, depths=(2, 2, 2, 2), num_heads=(2, 2, 4, 4),
      window_size=window, img_size=side).eval(), mean_sparse_threshold=0.5)
  sparse = [m for m in net.modules() if type(m).__name__ == "MeanSparse"]
  assert len(sparse) == 4 * 8 and all(float(m.threshold) == 0.5 for m in sparse)
  model, variables, x, out, ref = logits_against_torch(net, "swin", side, window=window,
                                                       mean_sparse=True, **TINY_SWIN)
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  plain = models.create_model("swin", num_classes=10, window=window, **TINY_SWIN)
  params_only = {"params": variables["params"]}  # the same weights without MeanSparse
  assert np.abs(np.asarray(plain.apply(params_only, x)) - out).max() > 1e-3
  exported = convert.flax_to_torch(variables, model)
  assert {k for k in net.state_dict() if "meansparse" in k and k.endswith(
      ("running_mean", "running_var", "threshold"))} <= set(exported)
