"""The robust distillation methods on CIFAR-10, each at its authors' recipe, into ResNet-18
(or MobileNetV2: --config.model.name=mobilenet_v2), from one robust teacher for all of them:
RobustBench's Zhang2019Theoretically (TRADES WRN-34-10, the MixACM paper's), read from
./models/cifar10/Linf/. The method is the config's argument:

    mixacm --config=configs/cifar10_distillation.py:ard --workdir=/tmp/ard \
        --config.data.data_dir=<prepared TFDS> --config.teacher.model_dir=./models
    # likewise :rslad, :iad, :adaad, :adaad_igdm, :mtard, :saad, :peeraid, :mixacm

PeerAiD has no teacher. MTARD's clean teacher is RobustBench's Standard (a naturally trained
WRN-28-10). The authors' own teachers differ (AdaAD: Chen2021LTD_WRN34_20; SAAD:
Gowal2021Improving_28_10_ddpm_100m): --config.teacher.robustbench=<entry> takes any. The attack of every method: 10 steps of 2/255
in the L-inf ball of 8/255.
"""
from typing import Any, Dict, NamedTuple, Tuple

from mixacm_jax.configs import cifar
from mixacm_jax.errors import ConfigError


class Recipe(NamedTuple):
  """A method's schedule and settings, from its paper and code."""
  objective: str
  epochs: int
  decay_epochs: Tuple[int, ...]
  weight_decay: float
  settings: Dict[str, Any]


RECIPES = {
    # Goldblum et al. 2020: alpha 1, temperature 30.
    "ard": Recipe("ard", 200, (100, 150), 2e-4, {"alpha": 1.0, "temperature": 30.0}),
    # Zi et al. 2021: 300 epochs, decays at 215, 260, 285.
    "rslad": Recipe("rslad", 300, (215, 260, 285), 2e-4, {}),
    # Zhu et al. 2022 (IAD-I): beta 0.1, introspection from epoch 60 of 200.
    "iad": Recipe("iad", 200, (100, 150), 2e-4, {"beta": 0.1, "begin": 0.3}),
    # Huang et al. 2023: weight decay 5e-4, the adversarial term alone.
    "adaad": Recipe("adaad", 200, (100, 150), 5e-4, {"alpha": 1.0}),
    # Lee et al. 2025: AdaAD + IGDM with alpha 1 on CIFAR-10 (HongsinLee/saad, igdm.py).
    "adaad_igdm": Recipe("adaad", 200, (100, 150), 2e-4, {"alpha": 1.0, "igdm_alpha": 1.0}),
    # Zhao et al. 2022: 300 epochs, decays at 215, 260, 285.
    "mtard": Recipe("mtard", 300, (215, 260, 285), 2e-4, {}),
    # Lee and Chung 2026 (HongsinLee/saad, main.sh).
    "saad": Recipe("saad", 200, (100, 150), 2e-4, {"gamma": 1.0, "igdm_alpha": 1.0}),
    # Jung et al. 2024: no teacher (a peer learns beside the student); 300 epochs, decays at
    # 214, 259, 284.
    "peeraid": Recipe("peeraid", 300, (214, 259, 284), 2e-4, {}),
}


def get_config(method: str = "ard"):
  if method == "mixacm":
    config = cifar.mixacm_config("resnet18", "wrn34_10", cifar.WRN_TO_RESNET_STAGES)
    config.teacher.robustbench = "Zhang2019Theoretically"
    return config
  if method not in RECIPES:
    raise ConfigError(f"unknown method {method!r} for configs/cifar10_distillation.py; known: "
                      f"{', '.join(['mixacm', *RECIPES])}")
  recipe = RECIPES[method]
  config = cifar.get_config("cifar10")
  config.model.name = "resnet18"
  config.objective.name = recipe.objective
  config.objective[recipe.objective].update(recipe.settings)
  config.teacher.model.name = "wrn34_10"
  config.teacher.robustbench = "" if method == "peeraid" else "Zhang2019Theoretically"
  if recipe.objective == "mtard":
    config.clean_teacher.robustbench = "Standard"
  config.optim.update(num_epochs=recipe.epochs, decay_epochs=recipe.decay_epochs,
                      weight_decay=recipe.weight_decay)
  return config
