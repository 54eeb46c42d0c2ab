"""Default config: the embedded `digits` dataset (scikit-learn's 8x8 handwritten digits) and
a small ResNet-18, PGD-AT (a robust teacher), evaluated on clean and PGD accuracy.
Finishes offline in a few minutes on 2 CPU cores; a smoke-scale stand-in for CIFAR-10."""
import ml_collections

# The methods with a training `attack`.
ADVERSARIAL_METHODS = ("pgd_at", "fast_at", "trades", "mart", "ard", "rslad", "iad", "adaad",
                       "mtard", "saad", "peeraid")


def training_attack(eps=0.1, step_size=0.025, steps=5, norm="linf"):
  """The attack an adversarial method trains on (its `objective.<name>.attack`)."""
  return ml_collections.ConfigDict(
      {"eps": eps, "step_size": step_size, "steps": steps, "norm": norm})


def fast_attack(eps=0.1, norm="linf"):
  """Fast-AT's attack (Wong et al. 2020): FGSM from a random start, step 1.25 eps."""
  return training_attack(eps, 1.25 * eps, 1, norm)


def set_training_attacks(objective_cfg, eps: float, step_size: float, steps: int) -> None:
  """Every adversarial objective's attack at one threat (and fast-AT's single step)."""
  for method in ADVERSARIAL_METHODS:
    objective_cfg[method].attack = training_attack(eps, step_size, steps)
  objective_cfg.fast_at.attack = fast_attack(eps)


def evaluation(attacks: str, every_steps: int = 0, num_examples: int = 0):
  """One named evaluation during training, an entry of `config.train_evals`."""
  return ml_collections.ConfigDict(
      {"attacks": attacks, "every_steps": every_steps, "num_examples": num_examples})


def robustbench_entry():
  """A RobustBench zoo entry by name, read from the folder RobustBench's `load_model` fills
  (<model_dir>/<dataset>/<threat_model>/<name>.pt); "" = not used."""
  return {"robustbench": "", "dataset": "cifar10", "threat_model": "Linf",
          "model_dir": "./models"}


def eval_settings(*, eps: float, step_size: float, norm: str = "linf",
                  attacks: str = "clean,pgd20,cw20", batch_size: int = 128):
  """`config.eval`: the threat every attack of every evaluation is bounded by, PGD's step,
  and the robustness report of `--mode=eval`."""
  return ml_collections.ConfigDict({
      "batch_size": batch_size,
      "num_examples": 0,                # --mode=eval: 0 = the whole split
      # eps and norm of every attack (the report's, the sweep's and training-time ones).
      "threat": {"eps": eps, "norm": norm},
      # The PGD / CW step at threat.eps (it scales with eps), random restarts, and the target
      # of pgd<k>_t / cw<k>_t: random (a class other than the label), least_likely, or a class.
      "pgd": {"step_size": step_size, "restarts": 1, "target": "random"},
      # --mode=eval: the report's attacks, e.g. fgsm, pgd20, cw20, apgd-ce, square, autoattack.
      "attacks": attacks,
      # standard | plus | rand | apgd, or stages joined by '+' (custom, e.g. apgd-ce+square).
      "autoattack_version": "standard",
      # worst_case: each stage on the points the earlier left robust (the original's
      # run_standard_evaluation); individual: each stage on every point, reported alone too.
      "autoattack_mode": "worst_case",
      # True: APGD as the original code in two details that fool the same points (the last
      # adversarial point kept, its first step-size window); False ends APGD early instead.
      "apgd_as_original": False,
      "eps_sweep": (),                  # e.g. (0.05, 0.1, 0.2): report + plot per eps
      # --mode=eval: each point's smallest perturbation by these attacks (fab, fmn; comma-
      # separated) and the robustness curves from it (robustness_curve.png); "": none.
      "min_norm": "",
      # --mode=eval: the checkpoint's weights (raw) or their moving average (ema, a run with
      # optim.ema.decay > 0).
      "weights": "raw",
  })


def data():
  return ml_collections.ConfigDict({
      "name": "digits",   # embedded; or any TFDS name: cifar10, cifar100, svhn_cropped
      "data_dir": ml_collections.config_dict.placeholder(str),
      "train_split": "train", "eval_split": "test",
      "crop_padding": 1,      # CIFAR configs use 4 (of 32 pixels); digits are 8x8
      "random_flip": False,   # digits are not mirror-symmetric
      # > 0: JPEGs of any size (imagenet2012), decoded here; training takes random-resized
      # crops of this side (area fraction >= crop_scale_min), evaluation resizes the shorter
      # side to eval_resize (0: not at all) and crops the centre (RobustBench: 256 / 224).
      "image_size": 0, "crop_scale_min": 0.08, "eval_resize": 0,
      "eval_interpolation": "bilinear",  # of that resize: bilinear | bicubic
      # A file of eval image names, one per line (RobustBench's 5,000 ImageNet images:
      # mixacm_jax/data/robustbench_imagenet_ids.txt); "": the whole eval split.
      "eval_ids": "",
      "num_threads": 2,       # Grain read-ahead threads (augmentation runs in them)
      "prefetch": 4})         # batches read ahead


def model(name: str = "resnet18"):
  """An architecture of `models.MODELS`; `kwargs` overrides its fields (here: ResNet-18's
  block counts at 1/4 width); mean / std: its input normalisation, if any."""
  placeholder = ml_collections.config_dict.placeholder
  return ml_collections.ConfigDict({
      "name": name,
      "kwargs": ml_collections.ConfigDict({"base_width": 16, "stage_sizes": (2, 2, 2, 2)}),
      "mean": placeholder(tuple), "std": placeholder(tuple), "dtype": "float32"})


def objectives():
  """Each method's own settings in its own group, `objective.<name>.*`; natural has none."""
  config = ml_collections.ConfigDict()
  # natural, pgd_at, fast_at, mixup, trades, mart, mixacm, kd, ard, rslad, iad, adaad,
  # mtard, saad, peeraid
  config.name = "pgd_at"
  config.natural = ml_collections.ConfigDict()
  config.pgd_at = ml_collections.ConfigDict({"attack": training_attack()})
  config.fast_at = ml_collections.ConfigDict({"attack": fast_attack()})
  # Mixup training alone (no teacher): Beta(alpha, alpha); one lambda per example or per batch.
  config.mixup = ml_collections.ConfigDict({"alpha": 1.0, "per_example": False})
  config.trades = ml_collections.ConfigDict({"beta": 6.0, "attack": training_attack()})
  # MART's lambda = 6, the paper's CIFAR-10 setting.
  config.mart = ml_collections.ConfigDict({"beta": 6.0, "attack": training_attack()})
  config.mixacm = ml_collections.ConfigDict({
      "w_ce": 1.0, "w_kd": 1.0, "w_acm": 10.0,  # weights of the three terms
      "temperature": 1.0,                      # of the KD term
      "mixup_alpha": 1.0,                      # Beta(alpha, alpha); 0 trains on clean inputs
      "mixup_per_example": False})             # one lambda per example, not per batch
  config.mixacm.acm = ml_collections.ConfigDict({
      "mapping": "mean_act",   # mean_act | mean_pow | max | attention
      "activation": "relu",    # applied before pooling (mean_act, max)
      "p": 2.0,                # power of mean_pow / attention
      "transform": "linear",   # linear | none
      # Matched blocks: "name" (same in both) or "student_name:teacher_name"; weights default 1.
      "stages": ("stem", "stage1", "stage2", "stage3", "stage4"),
      "stage_weights": ()})
  config.kd = ml_collections.ConfigDict({"w_ce": 1.0, "w_kd": 1.0, "temperature": 1.0})
  # alpha weights the KL term, 1 - alpha the clean cross-entropy.
  config.ard = ml_collections.ConfigDict(
      {"alpha": 1.0, "temperature": 1.0, "attack": training_attack()})
  config.rslad = ml_collections.ConfigDict({"attack": training_attack(), "igdm_alpha": 0.0})
  config.ard.igdm_alpha = 0.0
  # The robust distillation methods at their authors' defaults; igdm_alpha > 0 adds IGDM.
  # IAD: introspection from `begin` (fraction of training), trusted as 1 - p_T(y|x_adv)^beta.
  config.iad = ml_collections.ConfigDict({
      "alpha": 1.0, "beta": 0.1, "temperature": 1.0, "begin": 0.3, "igdm_alpha": 0.0,
      "attack": training_attack()})
  # AdaAD: alpha weights the adversarial KL, 1 - alpha the natural one.
  config.adaad = ml_collections.ConfigDict(
      {"alpha": 1.0, "igdm_alpha": 0.0, "attack": training_attack()})
  # MTARD: the robust teacher is config.teacher, the clean one config.clean_teacher.
  config.mtard = ml_collections.ConfigDict(
      {"initial_w_nat": 0.5, "lr_w": 0.025, "attack": training_attack()})
  # SAAD: Renyi order gamma of the weights' entropy, the linearised teacher's lambda_inner,
  # beta on the clean term (0: off), IGDM always on.
  config.saad = ml_collections.ConfigDict({
      "gamma": 1.0, "lambda_inner": 1.0, "beta": 0.0, "igdm_alpha": 1.0,
      "attack": training_attack()})
  # PeerAiD: no teacher; a peer trained beside the student (the code's CIFAR-10 weights).
  config.peeraid = ml_collections.ConfigDict({
      "temperature": 5.0, "peer_temperature": 1.0, "gamma1": 1.0, "gamma2": 0.1,
      "lambda1": 0.0, "lambda2": 1.0, "lambda3": 1.0, "attack": training_attack()})
  return config


def frozen_model():
  """A frozen model by checkpoint or zoo entry: the distillation objectives' teacher, and
  the source of transfer attacks (see `port.source`)."""
  config = ml_collections.ConfigDict()
  config.checkpoint = ""           # a workdir or checkpoint dir (orbax)
  config.update(robustbench_entry())  # or a RobustBench entry (its own model)
  config.step = 0                  # 0: the latest
  config.weights = "raw"           # raw | ema: the checkpoint's moving average (optim.ema)
  config.model = model()
  return config


def optim():
  return ml_collections.ConfigDict({
      "batch_size": 64, "num_epochs": 15,
      "num_steps": 0,            # > 0 overrides num_epochs
      "learning_rate": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 5e-4,
      "decay_acm_transforms": True,  # weight decay on MixACM's ACM transformations too
      "schedule": "cosine",      # cosine | piecewise | constant
      "warmup_epochs": 1.0,
      "decay_epochs": (50, 75),  # piecewise only
      "decay_factor": 0.1,
      # A moving average of the weights, kept, checkpointed and evaluated (metrics `ema/...`)
      # beside them: ema = decay * ema + (1 - decay) * w after each step; 0: none.
      "ema": {"decay": 0.0},
      # Adversarial weight perturbation (Wu et al. 2020) with any objective: the gradient at
      # w + v, v_l = gamma ||w_l|| g_l / ||g_l|| per kernel (0: none; the paper: 0.01 with
      # PGD-AT, 0.005 with TRADES), after warmup_epochs of plain steps.
      "awp": {"gamma": 0.0, "warmup_epochs": 0.0}})


def convert():
  """--mode=convert: a PyTorch weight file -> an orbax checkpoint in --workdir."""
  config = ml_collections.ConfigDict()
  config.update(robustbench_entry())  # by name: architecture and file from the zoo
  config.arch = ""                 # or by hand: e.g. wrn34_10, resnet18, preact_resnet18
  config.source = ""               # file.pt | file.pth | file.safetensors
  config.num_classes = 0           # 0: read off the classifier's weight
  config.image_shape = (32, 32, 3)
  # Constructor fields of the architecture (unset: its default), e.g. depth / widen_factor for
  # `wrn`, or final_bn=False, shortcut_from_preact=False for RobustBench's plain PreActResNet18().
  placeholder = ml_collections.config_dict.placeholder
  config.kwargs = ml_collections.ConfigDict({
      "depth": placeholder(int), "widen_factor": placeholder(int),
      "base_width": placeholder(int), "stage_sizes": placeholder(tuple),
      "final_bn": placeholder(bool), "shortcut_from_preact": placeholder(bool),
      "shortcut_kernel": placeholder(int), "activation": placeholder(str),
      "tf_same_padding": placeholder(bool), "block": placeholder(str),
      "stage_widths": placeholder(tuple), "stage_blocks": placeholder(tuple),
      "stem_width": placeholder(int), "cosine_head": placeholder(bool),
      "per_image_standardization": placeholder(bool), "mean_sparse": placeholder(bool),
      # transformers and MobileNetV2
      "embed_dim": placeholder(int), "depths": placeholder(tuple),
      "window": placeholder(int), "norm_eps": placeholder(float),
      "stem_strides": placeholder(tuple), "tokens_norm": placeholder(bool),
      "width_mult": placeholder(float), "last_width": placeholder(int),
      "form": placeholder(str), "mlp_ratio": placeholder(float),
      "patch_size": placeholder(int), "cls_attn_layers": placeholder(int),
      "se_ratio": placeholder(float)})
  return config


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.log_every_steps = 20
  config.data = data()
  config.model = model()
  config.objective = objectives()
  config.teacher = frozen_model()
  config.clean_teacher = frozen_model()  # MTARD's second teacher (naturally trained)
  # --mode=eval: also the points each attack crafts on this model, evaluated on the one under
  # test (transfer attacks); unset (no checkpoint, no robustbench entry): none.
  config.transfer = frozen_model()
  config.optim = optim()
  config.eval = eval_settings(eps=0.1, step_size=0.025)
  # Evaluations during training, by the same engine as --mode=eval (the same numbers for the
  # same attacks, bounded by eval.threat): name -> attacks, every_steps (0: at the end only),
  # num_examples (0: the whole eval split). The first is the run's clean / robust accuracy
  # (its lowest over its attacks), which the summary, the tables and checkpoint.best_metric
  # read.
  config.train_evals = ml_collections.ConfigDict({"pgd": evaluation("clean,pgd10")})
  config.convert = convert()
  config.checkpoint = ml_collections.ConfigDict(
      {"every_steps": 100, "keep": 2, "best_metric": "robust_accuracy", "async_save": True})
  return config
