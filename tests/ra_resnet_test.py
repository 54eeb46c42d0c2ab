"""RobustArch's ImageNet RaResNet (RaResNet) against RobustBench's own `robustarch_wide_resnet.py`
(`NormalizedConfigurableModel`), built small: the port's logits and stage activations, the
export back to PyTorch, and the zoo reader on the full ra_wrn101_2 built on the meta device."""
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch==2.13.0 is in requirements.txt; the port "
                                            "tests compare against PyTorch")

from mixacm_jax import models  # noqa: E402
from mixacm_jax.port import convert, state_dict as sd_lib  # noqa: E402
from tools import robustbench_zoo as robustbench  # noqa: E402
from conftest import robustbench_architecture  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORMALISATION_KEYS = {"normalization.mean", "normalization.std"}


def _tiny(ra, variant):
  """(factory, the fields the zoo reader must find besides the defaults). "ra_wrn101_2": its
  every kind of layer (7x7 stem, SiLU, no norm after the first 1x1, grouped 3x3, SE of the
  input width with ReLU, stride-2 stages, projections and identities) at narrow widths;
  "maxpool_stem": ReLU, a max-pooled 3x3 stem, BatchNorm everywhere, a stride-1 stage, no SE;
  "patch_stem": a 4x4 patchify stem, a dilated 5x5 conv and an SE with SiLU."""
  nn = torch.nn
  common = dict(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), kernel=3, dilation=1,
                downsample_norm=nn.BatchNorm2d, dense_ratio=None, stem_type=ra.Stem,
                stem_kernel=7, stem_downsample_factor=2, stem_patch_size=None,
                block_constructor=ra.BottleneckBlock,
                ConvBlock=ra.Conv2dNormActivation, num_classes=10)
  if variant == "ra_wrn101_2":
    kwargs = dict(stage_widths=[16, 32, 48, 64], strides=[2, 2, 2, 2],
                  norm_layer=[nn.Identity, nn.BatchNorm2d, nn.BatchNorm2d],
                  activation_layer=[nn.SiLU] * 3, group_widths=[2, 4, 6, 8],
                  bottleneck_multipliers=[0.25] * 4, depths=[2, 2, 1, 1], stem_width=8,
                  se_ratio=0.25, se_activation=nn.ReLU)
    fields = dict(stage_widths=(16, 32, 48, 64), depths=(2, 2, 1, 1), group_widths=(2, 4, 6, 8),
                  stem_width=8)
  elif variant == "maxpool_stem":
    kwargs = dict(stage_widths=[16, 24], strides=[1, 2], norm_layer=[nn.BatchNorm2d] * 3,
                  activation_layer=[nn.ReLU] * 3, group_widths=[4, 3],
                  bottleneck_multipliers=[0.5, 0.5], depths=[2, 1], stem_width=8,
                  stem_kernel=3, stem_downsample_factor=4, se_ratio=None)
    fields = dict(stage_widths=(16, 24), depths=(2, 1), strides=(1, 2), group_widths=(4, 3),
                  bottleneck_multipliers=(0.5, 0.5), branch_norms=(True, True, True),
                  activation="relu", stem_width=8, stem_kernel=3, stem_downsample_factor=4,
                  se_ratio=0.0)
  else:
    kwargs = dict(stage_widths=[16, 32], strides=[2, 2],
                  norm_layer=[nn.Identity, nn.BatchNorm2d, nn.BatchNorm2d],
                  activation_layer=[nn.SiLU] * 3, group_widths=[8, 4],
                  bottleneck_multipliers=[1.0, 0.5], depths=[1, 2], stem_width=16,
                  stem_patch_size=4, kernel=5, dilation=2, se_ratio=0.5, se_activation=nn.SiLU)
    fields = dict(stage_widths=(16, 32), depths=(1, 2), strides=(2, 2), group_widths=(8, 4),
                  bottleneck_multipliers=(1.0, 0.5), stem_width=16, stem_patch_size=4,
                  kernel=5, dilation=2, se_ratio=0.5, se_activation="swish")
  return lambda: ra.NormalizedConfigurableModel(**{**common, **kwargs}), fields


@pytest.mark.parametrize("variant", ["ra_wrn101_2", "maxpool_stem", "patch_stem"])
def test_logits_stages_and_export_match_robustarch(variant):
  ra = robustbench_architecture("robustarch_wide_resnet")
  factory, fields = _tiny(ra, variant)
  net = robustbench.randomise_initial_constants(
      robustbench.randomise_batchnorm(factory(), seed=len(variant)), seed=1)
  with torch.no_grad():  # the reference's head starts at std 0.01: logits too small to test
    net.fc.weight.normal_(0, net.fc.in_features ** -0.5, generator=torch.Generator().manual_seed(2))
    net.fc.bias.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(4))
  arch, kwargs = robustbench.registered_architecture(*robustbench._ra_resnet(net))
  assert (arch, kwargs) == ("ra_resnet", fields)
  stages = {"stem": "stem", **{f"stage{i + 1}": f"stages.stage{i + 1}"
                               for i in range(len(fields["depths"]))}}
  acts = {}
  for ours, theirs in stages.items():
    net.get_submodule(theirs).register_forward_hook(
        lambda m, i, o, ours=ours: acts.__setitem__(ours, o.detach().numpy()))
  x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
  with torch.no_grad():
    ref = net(x).numpy()
  state, norm = sd_lib.clean_state_dict({k: v.numpy() for k, v in net.state_dict().items()})
  assert norm == {"mean": None, "std": None}  # its buffers are normalization.mean / .std
  model = models.create_model(arch, num_classes=10, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                              **kwargs)
  variables = convert.torch_to_flax(state, model, (64, 64, 3))
  logits, feats, _ = models.apply_model(model, variables,
                                        jnp.asarray(x.numpy().transpose(0, 2, 3, 1)),
                                        train=False, names=list(stages) + ["features"])
  assert np.abs(ref).max() > 0.5  # random weights that do not vanish on the way
  assert float(np.max(np.abs(np.asarray(logits) - ref))) <= 1e-4
  for ours in stages:
    np.testing.assert_allclose(np.asarray(feats[ours]), acts[ours].transpose(0, 2, 3, 1),
                               atol=1e-4, rtol=1e-4)
  # Export: every tensor back under its own name; only the normalisation buffers are left
  # to the class (they are its constructor's mean / std, not weights).
  exported = convert.flax_to_torch(variables, model)
  theirs = net.state_dict()
  assert set(exported) == set(theirs) - NORMALISATION_KEYS
  for key, value in exported.items():
    np.testing.assert_array_equal(value, theirs[key].numpy(), err_msg=key)
  fresh = factory()
  missing, unexpected = fresh.load_state_dict({k: torch.from_numpy(v)
                                               for k, v in exported.items()}, strict=False)
  assert set(missing) == NORMALISATION_KEYS and not unexpected
  with torch.no_grad():
    np.testing.assert_array_equal(fresh.eval()(x).numpy(), ref)


def test_zoo_reads_ra_wrn101_2_and_its_normalisation():
  """RobustBench's Peng2023Robust (ImageNet) as the zoo builds it, on the meta device: the
  recipe names ra_wrn101_2 with no kwargs and ImageNet's mean / std, and every tensor of the
  full network maps onto the Flax model with its shape."""
  ra = robustbench_architecture("robustarch_wide_resnet")
  with robustbench.weights_on_meta():
    net = ra.get_model("ra_wrn101_2")
  assert robustbench._family(net)[0] is ra.NormalizedConfigurableModel
  assert robustbench.registered_architecture(*robustbench._ra_resnet(net)) == ("ra_wrn101_2", {})
  recipe = robustbench.derive_recipe(
      "Peng2023Robust", {"model": lambda: ra.get_model("ra_wrn101_2"), "gdrive_id": "-",
                         "preprocessing": "Res256Crop224"}, "imagenet", lambda name: False)
  assert recipe == {"arch": "ra_wrn101_2", "kwargs": {}, "num_classes": 1000,
                    "mean": IMAGENET_MEAN, "std": IMAGENET_STD, "image_shape": (224, 224, 3),
                    "checkpoint_key": "state_dict", "preprocessing": "Res256Crop224"}
  # Shapes only: zero-strided stand-ins for the 104M weights, mapped and checked strictly.
  shapes = {k: np.broadcast_to(np.float32(0), tuple(v.shape))
            for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
  model = models.create_model("ra_wrn101_2", num_classes=1000, mean=IMAGENET_MEAN,
                              std=IMAGENET_STD)
  variables = convert.torch_to_flax(shapes, model, (224, 224, 3))
  assert variables["params"]["stage3_block17"]["conv_b"]["kernel"].shape == (3, 3, 252, 504)
  assert variables["params"]["stage1_block0"]["se"]["fc1"]["kernel"].shape == (1, 1, 128, 24)
