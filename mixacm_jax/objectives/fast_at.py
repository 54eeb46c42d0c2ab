"""Fast adversarial training (Wong et al. 2020, "Fast is better than free"): cross-entropy on
FGSM examples made from a uniform random start in the eps-ball, one signed-gradient step of
1.25 eps, projected back onto the ball and the [0, 1] box.

That is PGD-AT's loss with a one-step attack, so this module is PGD-AT's functions under their
own settings group, `objective.fast_at.attack` (steps 1, step_size 1.25 eps: see
`configs.default.fast_attack`). One example-step costs two forward and two backward passes (the
attack's and the update's), against MixACM's three passes. As for PGD-AT here, the attack runs
the model in eval mode (running BatchNorm statistics); Wong et al.'s code attacks in train mode.
"""
from mixacm_jax.objectives import pgd_at

adversarial_examples = pgd_at.adversarial_examples
loss_fn = pgd_at.loss_fn
passes = pgd_at.passes
