"""Writes tests/data/meansparse_ra_wrn_tiny.npz: a tiny RobustArch RaWideResNet with MeanSparse
layers (thresholds 0.5) and squeeze-and-excitation, built by RobustBench's own class from a
checkout of its main branch, with seeded random weights, its input and its logits. CI has no
checkout; the stored logits guard the port of these layers there.

    python -m tools.meansparse_reference --source=/tmp/rb_main
"""
import argparse
import importlib

import numpy as np
import torch

from tools import robustbench_parity, robustbench_zoo

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--source", required=True, help="a checkout of RobustBench's main branch")
robustbench_zoo.zoo_package(parser.parse_args().source)
ra = importlib.import_module("robustbench.model_zoo.architectures.Meansparse_ra_wrn_70_16")
torch.manual_seed(0)
net = ra.NormalizedWideResNet(mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616),
                              stem_width=8, depth=[1, 2, 1], stage_width=[8, 16, 32],
                              groups=[1, 1, 1], activation_fn=torch.nn.SiLU, se_ratio=0.25,
                              se_activation=torch.nn.ReLU, se_order=2)
net = robustbench_zoo.randomise_initial_constants(robustbench_zoo.randomise_batchnorm(net))
x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
robustbench_parity.logits_at_scale(net, x)
with torch.no_grad():
  logits = net(x).numpy()
state = {f"state/{k}": v.numpy() for k, v in net.state_dict().items()}
np.savez_compressed("tests/data/meansparse_ra_wrn_tiny.npz", x=x.numpy(), logits=logits, **state)
print(len(state), logits.shape, np.abs(logits).max())
