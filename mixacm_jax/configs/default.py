"""Default config: the embedded `digits` dataset (scikit-learn's 8x8 handwritten digits) and
a small ResNet-18, PGD-AT (a robust teacher), evaluated on clean and PGD accuracy.
Finishes offline in a few minutes on 2 CPU cores; a smoke-scale stand-in for CIFAR-10."""
import ml_collections

ADVERSARIAL_METHODS = ("pgd_at", "fast_at", "trades", "ard", "rslad")  # the ones with `attack`


def training_attack(eps=0.1, step_size=0.025, steps=5, norm="linf"):
  """The attack an adversarial method trains on (its `objective.<name>.attack`)."""
  return ml_collections.ConfigDict(
      {"eps": eps, "step_size": step_size, "steps": steps, "norm": norm})


def fast_attack(eps=0.1, norm="linf"):
  """Fast-AT's attack (Wong et al. 2020): FGSM from a random start, step 1.25 eps."""
  return training_attack(eps, 1.25 * eps, 1, norm)


def evaluation(attacks: str, every_steps: int = 0, num_examples: int = 0):
  """One training-time evaluation of `config.evals`."""
  return ml_collections.ConfigDict(
      {"attacks": attacks, "every_steps": every_steps, "num_examples": num_examples})


def robustbench_entry():
  """A RobustBench zoo entry by name, read from the folder RobustBench's `load_model` fills
  (<model_dir>/<dataset>/<threat_model>/<name>.pt); "" = not used."""
  return {"robustbench": "", "dataset": "cifar10", "threat_model": "Linf",
          "model_dir": "./models"}


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.log_every_steps = 20

  config.data = ml_collections.ConfigDict()
  config.data.name = "digits"          # embedded; or any TFDS name: cifar10, cifar100, svhn_cropped
  config.data.data_dir = ml_collections.config_dict.placeholder(str)
  config.data.train_split = "train"
  config.data.eval_split = "test"
  config.data.crop_padding = 1         # CIFAR configs use 4 (of 32 pixels); digits are 8x8
  config.data.random_flip = False      # digits are not mirror-symmetric
  config.data.num_threads = 2          # Grain read-ahead threads (augmentation runs in them)
  config.data.prefetch = 4             # batches read ahead

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"
  # Overrides of the architecture's fields (here: ResNet-18's block counts, at 1/4 width).
  config.model.kwargs = ml_collections.ConfigDict({"base_width": 16, "stage_sizes": (2, 2, 2, 2)})
  config.model.mean = ml_collections.config_dict.placeholder(tuple)
  config.model.std = ml_collections.config_dict.placeholder(tuple)
  config.model.dtype = "float32"

  # Each method's own settings in its own group, `objective.<name>.*`; natural has none.
  config.objective = ml_collections.ConfigDict()
  config.objective.name = "pgd_at"  # natural, pgd_at, fast_at, mixup, trades, mixacm, kd,
  #                                 ard, rslad
  config.objective.natural = ml_collections.ConfigDict()
  config.objective.pgd_at = ml_collections.ConfigDict({"attack": training_attack()})
  config.objective.fast_at = ml_collections.ConfigDict({"attack": fast_attack()})
  # Mixup training alone (no teacher): Beta(alpha, alpha); one lambda per example or per batch.
  config.objective.mixup = ml_collections.ConfigDict({"alpha": 1.0, "per_example": False})
  config.objective.trades = ml_collections.ConfigDict({"beta": 6.0, "attack": training_attack()})
  config.objective.mixacm = ml_collections.ConfigDict({
      "w_ce": 1.0, "w_kd": 1.0, "w_acm": 10.0,  # weights of the three terms
      "temperature": 1.0,                      # of the KD term
      "mixup_alpha": 1.0,                      # Beta(alpha, alpha); 0 trains on clean inputs
      "mixup_per_example": False})             # one lambda per example, not per batch
  config.objective.mixacm.acm = ml_collections.ConfigDict()
  config.objective.mixacm.acm.mapping = "mean_act"  # mean_act | mean_pow | max | attention
  config.objective.mixacm.acm.activation = "relu"   # applied before pooling (mean_act, max)
  config.objective.mixacm.acm.p = 2.0               # power of mean_pow / attention
  config.objective.mixacm.acm.transform = "linear"  # linear | none
  # Matched blocks: "name" (same in both) or "student_name:teacher_name"; weights default 1.
  config.objective.mixacm.acm.stages = ("stem", "stage1", "stage2", "stage3", "stage4")
  config.objective.mixacm.acm.stage_weights = ()
  config.objective.kd = ml_collections.ConfigDict({"w_ce": 1.0, "w_kd": 1.0, "temperature": 1.0})
  # alpha weights the KL term, 1 - alpha the clean cross-entropy.
  config.objective.ard = ml_collections.ConfigDict(
      {"alpha": 1.0, "temperature": 1.0, "attack": training_attack()})
  config.objective.rslad = ml_collections.ConfigDict({"attack": training_attack()})

  # The frozen teacher of the distillation objectives.
  config.teacher = ml_collections.ConfigDict()
  config.teacher.checkpoint = ""           # a workdir or checkpoint dir (orbax)
  config.teacher.update(robustbench_entry())  # or a RobustBench entry (its own model)
  config.teacher.step = 0                  # 0: the latest
  config.teacher.model = ml_collections.ConfigDict()
  config.teacher.model.name = "resnet18"
  config.teacher.model.kwargs = ml_collections.ConfigDict(
      {"base_width": 16, "stage_sizes": (2, 2, 2, 2)})
  config.teacher.model.mean = ml_collections.config_dict.placeholder(tuple)
  config.teacher.model.std = ml_collections.config_dict.placeholder(tuple)
  config.teacher.model.dtype = "float32"

  config.optim = ml_collections.ConfigDict()
  config.optim.batch_size = 64
  config.optim.num_epochs = 15
  config.optim.num_steps = 0           # > 0 overrides num_epochs
  config.optim.learning_rate = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 5e-4
  config.optim.decay_acm_transforms = True  # weight decay on MixACM's ACM transformations too
  config.optim.schedule = "cosine"     # cosine | piecewise | constant
  config.optim.warmup_epochs = 1.0
  config.optim.decay_epochs = (50, 75)  # piecewise only
  config.optim.decay_factor = 0.1

  # The attacks' settings, for every evaluation (below and --mode=eval).
  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 128
  config.eval.num_examples = 0          # --mode=eval: 0 = the whole split
  # eps and norm of every attack; the PGD / CW step (it scales with eps) and random restarts.
  config.eval.pgd = ml_collections.ConfigDict(
      {"eps": 0.1, "step_size": 0.025, "norm": "linf", "restarts": 1})
  # --mode=eval: attacks of the robustness report (eps / norm / PGD step from eval.pgd).
  config.eval.attacks = "clean,pgd20,cw20"  # also: fgsm, apgd-ce, apgd-t, square, autoattack
  config.eval.autoattack_version = "standard"
  # True: APGD as the original code in two details that fool the same points (the last
  # adversarial point kept, its first step-size window); False ends APGD early instead.
  config.eval.apgd_as_original = False
  config.eval.eps_sweep = ()                 # e.g. (0.05, 0.1, 0.2): report + plot per eps
  # Evaluations during training, by the same engine as --mode=eval (the same numbers for the
  # same attacks): name -> attacks, every_steps (0: at the end only), num_examples (0: the
  # whole eval split). The first is the run's clean / robust accuracy (its lowest over its
  # attacks), which the summary, the tables and checkpoint.best_metric read.
  config.evals = ml_collections.ConfigDict()
  config.evals.pgd = evaluation("clean,pgd10")

  # --mode=convert: a PyTorch weight file -> an orbax checkpoint in --workdir.
  config.convert = ml_collections.ConfigDict()
  config.convert.update(robustbench_entry())  # by name: architecture and file from the zoo
  config.convert.arch = ""                 # or by hand: e.g. wrn34_10, resnet18, preact_resnet18
  config.convert.source = ""               # file.pt | file.pth | file.safetensors
  config.convert.num_classes = 0           # 0: read off the classifier's weight
  config.convert.image_shape = (32, 32, 3)
  # Constructor fields of the architecture (unset: its default), e.g. depth / widen_factor for
  # `wrn`, or final_bn=False, shortcut_from_preact=False for RobustBench's plain PreActResNet18().
  placeholder = ml_collections.config_dict.placeholder
  config.convert.kwargs = ml_collections.ConfigDict({
      "depth": placeholder(int), "widen_factor": placeholder(int),
      "base_width": placeholder(int), "stage_sizes": placeholder(tuple),
      "final_bn": placeholder(bool), "shortcut_from_preact": placeholder(bool),
      "shortcut_kernel": placeholder(int), "activation": placeholder(str),
      "tf_same_padding": placeholder(bool), "block": placeholder(str),
      "stage_widths": placeholder(tuple), "stage_blocks": placeholder(tuple),
      "stem_width": placeholder(int), "cosine_head": placeholder(bool),
      "per_image_standardization": placeholder(bool)})

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 100
  config.checkpoint.keep = 2
  config.checkpoint.best_metric = "robust_accuracy"
  config.checkpoint.async_save = True
  return config
