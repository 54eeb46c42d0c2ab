"""The ImageNet settings shared by the ImageNet configs: RobustBench's protocol (L-inf at
eps = 4/255, its 5,000 validation images, Res256Crop224), torchvision's ResNets, bfloat16
compute on accelerators.

Batch and learning rate: `optim.batch_size` is global (split over every device of every
host); the configs use 1024 (128 per device on 8 accelerators) and the linear scaling rule,
learning rate 0.1 x batch / 256 with a 5-epoch warmup (Goyal et al. 2017). Memory: the
attacks work on `eval.batch_size` points at a time (global, split over the devices), so
their memory at 224 px grows with it and not with the number of images evaluated; lower it
if an attack runs out of memory."""
import os

import ml_collections

from mixacm_jax.configs import default

EPS, STEP_SIZE = 4 / 255, 1 / 255
# RobustBench's list of its 5,000 ImageNet validation images (helper_files/
# imagenet_test_image_ids.txt of robustbench 1.1.1), shipped with the package.
ROBUSTBENCH_IDS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "data",
                               "robustbench_imagenet_ids.txt")
# ResNet teacher and student: both have a stem and four stages, matched one to one.
RESNET_STAGES = ("stem", "stage1", "stage2", "stage3", "stage4")


def get_config(batch_size: int = 1024):
  config = default.get_config()
  config.data.update(name="imagenet2012", train_split="train", eval_split="validation",
                     image_size=224, crop_scale_min=0.08, eval_resize=256,
                     eval_ids=ROBUSTBENCH_IDS, crop_padding=0, random_flip=True,
                     num_threads=64,  # JPEG decoding per example; one thread per host core
                     prefetch=4)
  for model in (config.model, config.teacher.model, config.transfer.model):
    model.kwargs = ml_collections.ConfigDict()  # the architectures' own sizes
    model.dtype = "auto"  # bfloat16 on accelerators, float32 on CPU
  config.model.name = "imagenet_resnet18"
  config.optim.update(batch_size=batch_size, learning_rate=0.1 * batch_size / 256,
                      weight_decay=1e-4, schedule="cosine", warmup_epochs=5.0,
                      num_epochs=90)
  config.eval = default.eval_settings(eps=EPS, step_size=STEP_SIZE, batch_size=256,
                                      attacks="clean,pgd20,autoattack")
  config.eval.num_examples = 0  # the whole eval split: here data.eval_ids' 5,000 images
  config.train_evals.pgd = default.evaluation("clean,pgd20", every_steps=5_000,
                                              num_examples=1_000)
  default.set_training_attacks(config.objective, EPS, STEP_SIZE, 4)
  config.checkpoint.every_steps = 2_000
  config.log_every_steps = 100
  return config


def mixacm_config(student: str, teacher_entry: str):
  """MixACM from RobustBench's ImageNet entry `teacher_entry` (its file in
  <teacher.model_dir>/imagenet/Linf/) into `student`."""
  config = get_config()
  config.model.name = student
  config.objective.name = "mixacm"
  config.objective.mixacm.acm.stages = RESNET_STAGES
  config.teacher.robustbench = teacher_entry
  config.teacher.dataset = "imagenet"
  config.teacher.threat_model = "Linf"
  return config
