"""MixACM on CIFAR-10: the paper's robust teacher, TRADES WideResNet-34-10 (RobustBench's
Zhang2019Theoretically, read from ./models/cifar10/Linf/), distilled into ResNet-18.

    mixacm --config=configs/cifar10_mixacm_wrn34_10_to_resnet18.py --workdir=/tmp/student \
        --config.data.data_dir=<prepared TFDS> --config.teacher.model_dir=./models

With --config.teacher.robustbench='' it takes --config.teacher.checkpoint instead, or, in
--mode=pipeline, trains its own TRADES teacher first.
"""
from mixacm_jax.configs import cifar


def get_config():
  config = cifar.mixacm_config("resnet18", "wrn34_10", cifar.WRN_TO_RESNET_STAGES)
  config.teacher.robustbench = "Zhang2019Theoretically"
  return config
