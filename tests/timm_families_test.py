"""timm's families in Flax, ConvNeXt and the Vision Transformer: logits against timm's own
modules, the ConvStem variants against logits stored from RobustBench's module (its main
branch; CI has no checkout), and a ConvNeXt and a ViT teacher distilled into a ResNet student
with MixACM."""
import os

import numpy as np
import pytest

from mixacm_jax import models
from mixacm_jax.port import convert

torch = pytest.importorskip("torch", reason="the reference is timm's PyTorch module")
from tools import robustbench_parity, robustbench_zoo, torch_reference  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

torch_reference.torchvision_models()  # timm imports torchvision's transforms
timm = pytest.importorskip("timm", reason="the reference is timm's ConvNeXt (port extra)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONVSTEM_REFERENCE = os.path.join(ROOT, "tests", "data", "convstem_reference.npz")
TINY = dict(depths=(1, 2, 1, 1), dims=(16, 24, 32, 40))
TINY_VIT = dict(patch_size=16, width=32, depth=4, heads=4)


def _ours(state, side, arch="convnext", **kwargs):
  model = models.create_model(arch, num_classes=10, **kwargs)
  variables = convert.torch_to_flax(state, model, (side, side, 3))
  return model, variables


def test_convnext_gives_timms_logits():
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_initial_constants(
      timm.models.convnext.ConvNeXt(num_classes=10, **TINY).eval())
  x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  robustbench_parity.logits_at_scale(net, x)
  with torch.no_grad():
    ref = net(x).numpy()
  model, variables = _ours({k: v.numpy() for k, v in net.state_dict().items()}, 64, **TINY)
  out = np.asarray(model.apply(variables, x.numpy().transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)
  # And back: our export is the state_dict timm's module loads strictly.
  net.load_state_dict({k: torch.from_numpy(v) for k, v in
                       convert.flax_to_torch(variables, model).items()}, strict=True)


def test_convstem_variants_give_the_stored_logits_of_robustbenchs_module():
  """Singh et al.'s ConvStem (ConvBlock1 and ConvBlock3 of RobustBench's main branch on a
  tiny timm ConvNeXt, ConvBlock on a tiny ViT): seeded weights, inputs and logits stored by
  `python -m tools.robustbench_parity --store_convstem=<checkout>`."""
  stored = np.load(CONVSTEM_REFERENCE)
  for variant, kwargs in (("block1", dict(TINY, stem="convstem", stem_width=8, stem_layers=2)),
                          ("block3", dict(TINY, stem="convstem", stem_width=8, stem_layers=3)),
                          ("vit", dict(TINY_VIT, arch="vit", stem="convstem", stem_width=8))):
    prefix = f"{variant}/"
    state = {k[len(prefix):]: stored[k] for k in stored.files
             if k.startswith(prefix) and k[len(prefix):] not in ("input", "logits")}
    model, variables = _ours(state, 64, **kwargs)
    out = np.asarray(model.apply(variables, stored[prefix + "input"]))
    np.testing.assert_allclose(out, stored[prefix + "logits"], atol=1e-4, rtol=0)


def test_vit_gives_timms_logits_and_sows_its_patch_grid():
  torch.manual_seed(0)
  net = robustbench_zoo.randomise_initial_constants(
      timm.models.vision_transformer.VisionTransformer(
          img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=4,
          num_classes=10).eval())
  x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
  robustbench_parity.logits_at_scale(net, x)
  with torch.no_grad():
    ref = net(x).numpy()
  model, variables = _ours({k: v.numpy() for k, v in net.state_dict().items()}, 64, "vit",
                           **TINY_VIT)
  out, state = model.apply(variables, x.numpy().transpose(0, 2, 3, 1),
                           mutable=["intermediates"])
  np.testing.assert_allclose(np.asarray(out), ref, atol=1e-4, rtol=0)
  # Each stage's patch tokens on their 4x4 grid, the class token left out: the last stage
  # is the final block's output (before the final norm) without its first token.
  acts = {}
  net.blocks[-1].register_forward_hook(lambda m, i, o: acts.__setitem__("last", o))
  with torch.no_grad():
    net(x)
  stage4 = np.asarray(state["intermediates"]["stage4"])
  assert stage4.shape == (2, 4, 4, 32)
  np.testing.assert_allclose(stage4.reshape(2, 16, 32), acts["last"][:, 1:].numpy(),
                             atol=1e-4, rtol=1e-4)
  net.load_state_dict({k: torch.from_numpy(v) for k, v in
                       convert.flax_to_torch(variables, model).items()}, strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("arch,kwargs", [("convnext", TINY), ("vit", dict(TINY_VIT,
                                                                          patch_size=4))])
def test_a_convnext_or_vit_teacher_distils_into_a_resnet_student(tiny_config, tmp_path, arch,
                                                                 kwargs):
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
