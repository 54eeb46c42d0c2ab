"""Once, outside CI: this library's distillation losses, attacks and AWP against the authors'
PyTorch code on the same tensors (float64). The authors' repositories are read from
checkouts, one folder per repository under MIXACM_AUTHORS_CODE (default
/tmp/authors_check): IAD (ZFancy/IAD), saad (HongsinLee/saad: SAAD, IGDM), MTARD
(zhaoshiji123/MTARD), AWP (csdongxian/AWP), AdaAD (boyellow/AdaAD), PeerAiD
(jaewonalive/PeerAiD: main.py). Where a loss is inline
in a training loop, its lines are cut out of the checkout by marker strings and run as they
are; where it is a function, it is imported and called. Nothing of theirs is kept here.

    MIXACM_AUTHORS_CODE=/tmp/authors_check python -m tools.distillation_vs_authors

Its table is in docs/methods.md.
"""
import ast
import copy
import importlib.util
import os
import sys
import textwrap
import types
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=1")

import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)
torch.set_num_threads(1)

from mixacm_jax.configs import default
from mixacm_jax.objectives import common, iad, igdm, mtard, saad, adaad, peeraid
from mixacm_jax.objectives.common import ObjectiveContext
from mixacm_jax.training import awp

HERE = os.environ.get("MIXACM_AUTHORS_CODE", "/tmp/authors_check")
ROWS = []


def row(method, what, ours, theirs, note=""):
  a, b = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  d = float(np.max(np.abs(a - b)))
  rel = d / max(float(np.max(np.abs(b))), 1e-300)
  ROWS.append((method, what, d, rel, note))


def t2n(t):
  return t.detach().cpu().numpy()


def src(path):
  with open(os.path.join(HERE, path)) as f:
    return f.read()


def lines_between(path, start, end, include_end=True, after=None):
  """The verbatim source lines from the first containing `start` (after the first line
  containing `after`, if given) to the next containing `end`, dedented."""
  ls = src(path).splitlines()
  a = 0 if after is None else next(k for k, l in enumerate(ls) if after in l)
  i = next(k for k in range(a, len(ls)) if start in ls[k])
  j = next(k for k in range(i, len(ls)) if end in ls[k])
  return textwrap.dedent("\n".join(ls[i:j + (1 if include_end else 0)]))


def functions_from(path, names):
  """exec the named top-level function definitions of a file, verbatim (ast source)."""
  text = src(path)
  ns = {"torch": torch, "nn": nn, "F": F, "np": np}
  for node in ast.parse(text).body:
    if isinstance(node, ast.FunctionDef) and node.name in names:
      exec(ast.get_source_segment(text, node), ns)
  return ns


def load_module(name, path):
  spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, path))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


rng = np.random.default_rng(0)
B, C = 6, 10


def logits(scale=3.0):
  return rng.normal(size=(B, C)) * scale


labels = rng.integers(0, C, size=B)
L = lambda a: torch.tensor(a, requires_grad=True)

# ---------------------------------------------------------------- common.kl
t_, s_ = logits(), logits()
row("common", "kl_per_example vs F.kl_div(none).sum(1)", common.kl_per_example(t_, s_),
    t2n(F.kl_div(F.log_softmax(torch.tensor(s_), 1), F.softmax(torch.tensor(t_), 1),
                 reduction="none").sum(1)))
row("common", "kl_divergence vs F.kl_div(batchmean)", common.kl_divergence(t_, s_),
    t2n(F.kl_div(F.log_softmax(torch.tensor(s_), 1), F.softmax(torch.tensor(t_), 1),
                 reduction="batchmean")))

# ---------------------------------------------------------------- IAD-I (inline lines)
iad_block = lines_between("IAD/IAD-I.py", "if epoch >= args.begin:", "loss.backward()", False)
iad_defs = (lines_between("IAD/IAD-I.py", "KL_loss = nn.KLDivLoss(reduce=False)",
                          "KL_loss = nn.KLDivLoss(reduce=False)") + "\n" +
            lines_between("IAD/IAD-I.py", "XENT_loss = nn.CrossEntropyLoss()",
                          "XENT_loss = nn.CrossEntropyLoss()"))


def iad_authors(t_nat, t_adv, s_adv, s_nat, y, alpha, temp, beta, epoch, begin):
  s_adv_t, s_nat_t = L(s_adv), L(s_nat)
  ns = {"torch": torch, "nn": nn, "F": F,
        "args": types.SimpleNamespace(alpha=alpha, temp=temp, beta=beta, begin=begin),
        "epoch": epoch, "outputs": s_adv_t, "teacher_outputs": torch.tensor(t_nat),
        "guide": torch.tensor(t_adv), "targets": torch.tensor(y), "inputs": torch.zeros(B),
        "basic_net": lambda _: s_nat_t,              # basic_net(inputs): the student at x
        "Alpha": torch.ones(B)}                       # Alpha = torch.ones(len(inputs)).cuda()
  exec(iad_defs, ns)
  exec(iad_block, ns)
  ns["loss"].backward()
  return t2n(ns["loss"]), t2n(s_adv_t.grad), t2n(s_nat_t.grad)


for temp, alpha, on in ((1.0, 1.0, True), (2.0, 0.7, True), (2.0, 0.7, False)):
  cfg = default.objectives().iad
  cfg.temperature, cfg.alpha = temp, alpha
  t_nat, t_adv, s_adv, s_nat = logits(), logits(), logits(), logits()

  def ours(s_adv, s_nat):
    kd, intro, ce = iad.iad_terms(t_nat, t_adv, s_adv, s_nat, jnp.asarray(labels), cfg)
    return cfg.alpha * (kd + float(on) * jnp.mean(intro)) + (1 - cfg.alpha) * ce  # loss_fn's line
  lo, (ga, gn) = jax.value_and_grad(ours, (0, 1))(s_adv, s_nat)
  la, gaa, gna = iad_authors(t_nat, t_adv, s_adv, s_nat, labels, alpha, temp, cfg.beta,
                             60 if on else 59, 60)
  tag = f"T={temp} alpha={alpha} intro={'on' if on else 'off'}"
  row("IAD-I", f"loss ({tag})", lo, la, "inline lines exec'd verbatim")
  row("IAD-I", f"d loss/d (S(x_adv), S(x)) ({tag})", np.concatenate([ga, gn]),
      np.concatenate([gaa, gna]))

# ---------------------------------------------------------------- IGDM
u = functions_from("saad/utils.py", ["samplewise_kl_div", "samplewise_renyi_entropy"])
tp, tm, sp, sm = logits(), logits(), logits(), logits()
row("IGDM", "difference_kl vs samplewise_kl_div(S+-S-, T+-T-) (saad.py)",
    igdm.difference_kl(tp, tm, sp, sm),
    t2n(u["samplewise_kl_div"](torch.tensor(sp - sm), torch.tensor(tp - tm))))
igdm_block = (lines_between("saad/igdm.py", "criterion_kl = nn.KLDivLoss", "criterion_kl = nn.KLDivLoss")
              + "\n" + lines_between("saad/igdm.py", "IGDM_loss = criterion_kl(",
                                     "loss = kl_loss + args.igdm_alpha"))
sp_t, sm_t = L(sp), L(sm)
ns = {"torch": torch, "nn": nn, "F": F, "epoch": 50,
      "args": types.SimpleNamespace(igdm_alpha=1.0), "student_plus": sp_t,
      "student_minus": sm_t, "teacher_plus": torch.tensor(tp), "teacher_minus": torch.tensor(tm)}
exec(igdm_block, ns)
ns["loss"].backward()
f = lambda sp, sm: (common.kl_divergence(tp, sp)
                    + 1.0 * (50 / 200) * jnp.mean(igdm.difference_kl(tp, tm, sp, sm)))
lo, g = jax.value_and_grad(f, (0, 1))(sp, sm)
row("IGDM", "igdm.py loss KL+a*(e/200)*IGDM (batchmean)", lo, t2n(ns["loss"]),
    "igdm.py hard-codes /200 epochs")
row("IGDM", "its grad wrt (S+, S-)", np.concatenate(g), np.concatenate([t2n(sp_t.grad), t2n(sm_t.grad)]))

# ---------------------------------------------------------------- SAAD weights + loss
pm_weights = lambda order: jax.pmap(lambda t: saad.sample_weights(t, order), axis_name="batch")
saad_block = lines_between("saad/saad.py", "teacher_ent_per = samplewise_renyi_entropy",
                           "kl_loss = weighted_kl.mean()")
for gamma, beta in ((1.0, 0.0), (1.0, 0.5), (2.0, 0.5), (0.5, 0.5)):
  tp, tm, tc, sp, sm, sc = (logits() for _ in range(6))
  epoch, epochs, ia = 30, 200, 1.0
  row("SAAD", f"renyi_entropy order {gamma}", saad.renyi_entropy(tp, gamma),
      t2n(u["samplewise_renyi_entropy"](torch.tensor(tp), gamma)),
      "authors: log(sum p^a + 1e-12)" if gamma != 1.0 else "")
  w, wn = (np.asarray(v)[0] for v in pm_weights(gamma)(tp[None]))
  sp_t, sm_t, sc_t = L(sp), L(sm), L(sc)
  ns = {"torch": torch, **u, "epoch": epoch,
        "args": types.SimpleNamespace(gamma=gamma, igdm_alpha=ia, epochs=epochs, beta=beta),
        "teacher_plus": torch.tensor(tp), "teacher_minus": torch.tensor(tm),
        "teacher_clean": torch.tensor(tc), "student_plus": sp_t, "student_minus": sm_t,
        "student_clean": sc_t}
  exec(saad_block, ns)
  ns["kl_loss"].backward()
  row("SAAD", f"w (gamma={gamma})", w, t2n(ns["w"]), "pmap, 1 device")
  row("SAAD", f"w_norm (gamma={gamma})", wn, t2n(ns["w_norm"]))

  def ours(sp, sm, sc):   # loss_fn's lines, with progress = epoch/epochs
    w, wn = jax.tree.map(lambda v: v[0], pm_weights(gamma)(tp[None]))
    per = w * (common.kl_per_example(tp, sp) + ia * (epoch / epochs) * igdm.difference_kl(tp, tm, sp, sm))
    if beta:
      per = per + beta * (1.0 - wn) * common.kl_per_example(tc, sc)
    return jnp.mean(per)
  lo, g = jax.value_and_grad(ours, (0, 1, 2))(sp, sm, sc)
  row("SAAD", f"loss (gamma={gamma}, beta={beta}, igdm on)", lo, t2n(ns["kl_loss"]),
      "saad.py lines exec'd verbatim")
  row("SAAD", f"d loss/d (S+, S-, S(x)) (gamma={gamma}, beta={beta})", np.concatenate(g),
      np.concatenate([t2n(v.grad) if v.grad is not None else np.zeros((B, C))
                      for v in (sp_t, sm_t, sc_t)]))

# ------------------------------------------- SAAD linearised teacher + inner attacks (toy nets)
xs = rng.uniform(0.05, 0.95, size=(B, 3, 4, 4))  # interior: the start's [0,1] clip is a no-op
D = 3 * 4 * 4


def toy(seed):
  r = np.random.default_rng(seed)
  return [r.normal(size=(D, 16)) / 3, r.normal(size=16) * .1, r.normal(size=(16, C)), r.normal(size=C) * .1]


def jax_net(p):
  return lambda x: jnp.tanh(x.reshape(x.shape[0], -1) @ p[0] + p[1]) @ p[2] + p[3]


def torch_net(p):
  m = nn.Sequential(nn.Flatten(), nn.Linear(D, 16), nn.Tanh(), nn.Linear(16, C))
  with torch.no_grad():
    m[1].weight.copy_(torch.tensor(p[0].T)); m[1].bias.copy_(torch.tensor(p[1]))
    m[3].weight.copy_(torch.tensor(p[2].T)); m[3].bias.copy_(torch.tensor(p[3]))
  return m


ps, pt = toy(1), toy(2)
s_j, t_j = jax_net(ps), jax_net(pt)
s_t, t_t = torch_net(ps), torch_net(pt)
scfg = default.objectives().saad
scfg.attack.eps, scfg.attack.step_size, scfg.attack.steps = 8 / 255, 2 / 255, 3
scfg.lambda_inner = 1.5
ctx = ObjectiveContext(forward=lambda p, bs, x, train, names: (s_j(x), {}, bs), batch_stats={},
                       rng=jax.random.PRNGKey(7), cfg=scfg, teacher=lambda x, names: (t_j(x), {}))
x_prime = xs + rng.uniform(-8 / 255, 8 / 255, size=xs.shape)
target = saad.linearised_teacher(ctx, jnp.asarray(xs), jnp.asarray(labels))(jnp.asarray(x_prime))
# the authors' lines inside attacks.saad_inner_loss, exec'd verbatim
lin_pre = lines_between("saad/attacks.py", "x_temp = x_natural.detach()", ")[0]")
lin_post = lines_between("saad/attacks.py", "input_diff = x_adv - x_natural",
                         "corrected_teacher_logits[torch.arange(B), y] +=")
ns = {"torch": torch, "teacher_model": t_t, "x_natural": torch.tensor(xs), "y": torch.tensor(labels),
      "x_adv": torch.tensor(x_prime), "beta": 1.5}
exec(lin_pre + "\n" + lin_post, ns)
row("SAAD", "linearised teacher T~(x') (lambda 1.5)", target, t2n(ns["corrected_teacher_logits"]),
    "attacks.py lines exec'd verbatim")

# Whole inner attacks, with the authors' Gaussian start replaced by our per-example noise.
noise = np.asarray(jax.vmap(lambda k, v: jax.random.normal(k, v.shape, v.dtype))(
    ctx.example_keys(B), jnp.asarray(xs)))
sys.path.insert(0, os.path.join(HERE, "saad"))
saad_attacks = load_module("saad_attacks", "saad/attacks.py")
orig_randn_like, orig_randn, orig_cuda = torch.randn_like, torch.randn, torch.Tensor.cuda
torch.randn_like = lambda *a, **k: torch.tensor(noise)
try:
  xa_t = saad_attacks.saad_inner_loss(s_t, t_t, torch.tensor(xs), torch.tensor(labels),
                                      torch.optim.SGD(s_t.parameters(), lr=0.1), step_size=2 / 255,
                                      epsilon=8 / 255, perturb_steps=3, beta=1.5)
finally:
  torch.randn_like = orig_randn_like
xa_j = common.kl_adversarial_examples(None, ctx, jnp.asarray(xs),
                                      saad.linearised_teacher(ctx, jnp.asarray(xs), jnp.asarray(labels)))
row("SAAD", "inner attack x_adv (3 steps, same start noise)", xa_j, t2n(xa_t),
    "saad_inner_loss called; randn_like patched")

adaad_helper = load_module("adaad_helper", "AdaAD/AT_helper.py")
torch.randn = lambda *a, **k: torch.tensor(noise)
torch.Tensor.cuda = lambda self, *a, **k: self
try:
  xa_t = adaad_helper.adaad_inner_loss(s_t, t_t, torch.tensor(xs), step_size=2 / 255, steps=3,
                                       epsilon=8 / 255)
finally:
  torch.randn, torch.Tensor.cuda = orig_randn, orig_cuda
xa_j = common.kl_adversarial_examples(None, ctx, jnp.asarray(xs), adaad.teacher_logits(ctx))
row("AdaAD", "inner attack x_adv (3 steps, same start noise)", xa_j, t2n(xa_t),
    "adaad_inner_loss called; randn/.cuda patched")

# ---------------------------------------------------------------- AdaAD loss formula
ada_block = lines_between("AdaAD/main.py", "if args.dataset == 'CIFAR10':",
                          "loss = args.AdaAD_alpha*kl_loss1", after="elif args.method == 'AdaAD':")
for ds, factor in (("CIFAR10", C), ("CIFAR100", 1)):
  ta, sa, tn, sn = logits(), logits(), logits(), logits()
  ns = {"torch": torch, "nn": nn, "F": F, "args": types.SimpleNamespace(dataset=ds, AdaAD_alpha=0.8),
        "adv_outputs": torch.tensor(sa), "t_adv_outputs": torch.tensor(ta),
        "ori_outputs": torch.tensor(sn), "t_ori_outputs": torch.tensor(tn)}
  exec(ada_block, ns)
  lo = 0.8 * common.kl_divergence(ta, sa) + 0.2 * common.kl_divergence(tn, sn)
  row("AdaAD", f"loss alpha=0.8, {ds} branch x{factor}", lo, factor * t2n(ns["loss"]),
      f"KLDivLoss() mean: /B*C -> ours = {factor} x theirs" if factor > 1 else "sum/B = ours")

# ---------------------------------------------------------------- MTARD
mt_src = "MTARD/mtard/mtard_resnet18_cifar10.py"
mt_block = lines_between(mt_src, "kl_Loss1 = kl_loss(F.log_softmax(student_adv_logits",
                         'total_loss = weight["adv_loss"]*kl_Loss1')
mt_ns = {"torch": torch, "F": F, "init_loss_nat": None, "init_loss_adv": None,
         "weight": {"adv_loss": 1 / 2.0, "nat_loss": 1 / 2.0}, "weight_learn_rate": 0.025, "bert": 1}
exec(lines_between(mt_src, "def kl_loss(a,b):", "return loss"), mt_ns)
mcfg = default.objectives().mtard
state_a = state_b = mtard.init_state(mcfg)
state_c = jax.tree.map(lambda v: v.astype(jnp.float64), state_b)   # same rule, float64 state
w_f64 = []
w_ours, w_fed, w_theirs, l_ours, l_theirs = [], [], [], [], []
for step in range(8):
  ta, sa, tn, sn = logits(), logits() * (1 - step / 10), logits(), logits() * (1 - step / 20)
  mt_ns.update(student_adv_logits=torch.tensor(sa), teacher_adv_logits=torch.tensor(ta),
               student_nat_logits=torch.tensor(sn), teacher_nat_logits=torch.tensor(tn))
  exec(mt_block, mt_ns)
  l_adv, l_nat = common.kl_divergence(ta, sa), common.kl_divergence(tn, sn)
  state_a = mtard.balance(state_a, l_nat, l_adv, mcfg.lr_w)
  # the balance rule alone, fed the authors' own (/C, +1e-5) losses
  state_b = mtard.balance(state_b, mt_ns["kl_Loss2"].item(), mt_ns["kl_Loss1"].item(), mcfg.lr_w)
  state_c = mtard.balance(state_c, mt_ns["kl_Loss2"].item(), mt_ns["kl_Loss1"].item(), mcfg.lr_w)
  w_f64.append(float(state_c["w_nat"]))
  w_ours.append(float(state_a["w_nat"])); w_fed.append(float(state_b["w_nat"]))
  w_theirs.append(mt_ns["weight"]["nat_loss"])
  l_ours.append(float((1 - state_a["w_nat"]) * l_adv + state_a["w_nat"] * l_nat))
  l_theirs.append(mt_ns["total_loss"].item())
row("MTARD", "w_nat, 8 steps, balance() fed authors' losses", w_fed, w_theirs, "inline lines exec'd")
row("MTARD", "w_nat, same, init_state cast to float64", w_f64, w_theirs,
    "residual above = init_state's float32")
row("MTARD", "w_nat, 8 steps, end to end from logits", w_ours, w_theirs,
    "authors' KL has log(p+1e-5)")
row("MTARD", f"total loss, 8 steps, x{C}", l_ours, C * np.asarray(l_theirs),
    f"torch.mean over B*C: ours = {C} x theirs; +1e-5 in log")

# ---------------------------------------------------------------- PeerAiD (inline lines)
pa_src = "PeerAiD/main.py"
pa_defs = (lines_between(pa_src, "peer_criterion = nn.CrossEntropyLoss()",
                         "peer_criterion = nn.CrossEntropyLoss()") + "\n" +
           lines_between(pa_src, "T = args.temperature", "T = args.temperature", after="def train_kd"))
pa_block = lines_between(pa_src, "adv_outputs = peer_net(adv)", "loss_total = loss_peer + loss_student",
                         after="def train_kd")


class _Net:
  """Stands in for a network in train_kd: returns the given logits, call by call."""
  def __init__(self, *outs):
    self.outs = list(outs)

  def __call__(self, x):
    return self.outs.pop(0)

  def train(self, mode=True):
    return self


x_stub, in_stub = torch.zeros(B, 3), torch.zeros(B, 3)
t_, s_ = logits(), logits()
row("PeerAiD", "kl_mean (T=5) vs nn.KLDivLoss() default",
    peeraid.kl_mean(t_, s_, 5.0),
    t2n(nn.KLDivLoss()(F.log_softmax(torch.tensor(s_) / 5, 1), F.softmax(torch.tensor(t_) / 5, 1))),
    "default reduction: sum / (B*C)")
for tag, over in (("CIFAR-10 cfg", {}),
                  ("all on: l1 .5, Tr 2", {"lambda1": 0.5, "peer_temperature": 2.0})):
  pcfg = default.objectives().peeraid
  for k, v in over.items():
    pcfg[k] = v
  pa, st, sa, sn = logits(), logits(), logits(), logits()
  pa_t, st_t, sa_t, sn_t = L(pa), L(st), L(sa), L(sn)
  ns = {"torch": torch, "nn": nn, "F": F,
        "args": types.SimpleNamespace(temperature=pcfg.temperature,
                                      re_kd_temperature=pcfg.peer_temperature,
                                      gamma1=pcfg.gamma1, gamma2=pcfg.gamma2, lamb1=pcfg.lambda1,
                                      lamb2=pcfg.lambda2, lamb3=pcfg.lambda3),
        "adv": x_stub, "inputs": in_stub, "targets": torch.tensor(labels),
        "peer_net": _Net(pa_t),                       # Pa = peer_net(adv)
        "student_net": _Net(st_t, sa_t, sn_t),        # St, Sa = student_net(adv); Sn = student_net(inputs)
        "peer_train_loss": 0, "total": 0, "correct": 0, "total_student": 0, "correct_student": 0}
  exec(pa_defs, ns)
  exec(pa_block, ns)
  ns["loss_total"].backward()
  assert not ns["peer_net"].outs and not ns["student_net"].outs
  lp, ls = peeraid.peeraid_losses(pa, st, sa, sn, jnp.asarray(labels), pcfg)
  g = jax.grad(lambda *a: sum(peeraid.peeraid_losses(*a, jnp.asarray(labels), pcfg)),
               (0, 1, 2, 3))(pa, st, sa, sn)
  row("PeerAiD", f"peer loss ({tag})", lp, t2n(ns["loss_peer"]), "train_kd lines exec'd verbatim")
  row("PeerAiD", f"student loss ({tag})", ls, t2n(ns["loss_student"]))
  row("PeerAiD", f"d(peer+student)/d(Pa,St,Sa,Sn) ({tag})", np.concatenate(g),
      np.concatenate([t2n(v.grad) if v.grad is not None else np.zeros((B, C))
                      for v in (pa_t, st_t, sa_t, sn_t)]), "Pa detached in student's KL")

# ---------------------------------------------------------------- AWP
utils_awp = load_module("utils_awp", "AWP/AT_AWP/utils_awp.py")


class Tiny(nn.Module):
  def __init__(self):
    super().__init__()
    self.conv = nn.Conv2d(3, 4, 3, bias=False)
    self.bn = nn.BatchNorm2d(4)
    self.fc = nn.Linear(4 * 2 * 2, C)

  def forward(self, x):
    return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


torch.manual_seed(0)
model = Tiny()
with torch.no_grad():
  model.bn.weight.uniform_(0.5, 1.5); model.bn.bias.normal_()
proxy = copy.deepcopy(model)
xb, yb = torch.tensor(xs), torch.tensor(labels)
gamma = 0.01
adversary = utils_awp.AdvWeightPerturb(model, proxy, torch.optim.SGD(proxy.parameters(), lr=0.01), gamma)
diff = adversary.calc_awp(inputs_adv=xb, targets=yb)
v_theirs = {k: gamma * t2n(v) for k, v in diff.items()}       # perturb(): coeff = gamma
grad_model = copy.deepcopy(model); grad_model.train()
gr = dict(zip([n for n, _ in grad_model.named_parameters()],
              torch.autograd.grad(F.cross_entropy(grad_model(xb), yb), list(grad_model.parameters()))))
sd = {k: t2n(v) for k, v in model.state_dict().items()}
params = {"conv": {"kernel": sd["conv.weight"].transpose(2, 3, 1, 0)},
          "bn": {"scale": sd["bn.weight"], "bias": sd["bn.bias"]},
          "fc": {"kernel": sd["fc.weight"].T, "bias": sd["fc.bias"]}}
grads = {"conv": {"kernel": t2n(gr["conv.weight"]).transpose(2, 3, 1, 0)},
         "bn": {"scale": t2n(gr["bn.weight"]), "bias": t2n(gr["bn.bias"])},
         "fc": {"kernel": t2n(gr["fc.weight"]).T, "bias": t2n(gr["fc.bias"])}}
v = jax.tree.map(np.asarray, awp.perturbation(params, grads, gamma))
row("AWP", "v conv kernel (ours transposed to OIHW)", v["conv"]["kernel"].transpose(3, 2, 0, 1),
    v_theirs["conv.weight"], "SGD lr 0.01 proxy step cancels")
row("AWP", "v fc kernel (ours .T)", v["fc"]["kernel"].T, v_theirs["fc.weight"])
row("AWP", "||v|| per kernel", [np.linalg.norm(v["conv"]["kernel"]), np.linalg.norm(v["fc"]["kernel"])],
    [np.linalg.norm(v_theirs["conv.weight"]), np.linalg.norm(v_theirs["fc.weight"])])
row("AWP", "1-D tensors (BN, biases): ours 0, theirs absent",
    np.concatenate([v["bn"]["scale"], v["bn"]["bias"], v["fc"]["bias"]]), np.zeros(4 + 4 + C),
    f"perturbed keys theirs: {sorted(diff)}")

# ---------------------------------------------------------------- table
print(f"{'method':7} | {'compared':58} | {'max|diff|':>9} | {'rel':>9} | notes")
print("-" * 130)
for m, w, d, r, n in ROWS:
  print(f"{m:7} | {w:58} | {d:9.2e} | {r:9.2e} | {n}")
