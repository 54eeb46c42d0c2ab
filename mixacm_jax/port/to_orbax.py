"""`--mode=convert`: a PyTorch weight file, or a RobustBench entry by name, as an orbax
checkpoint of {params, batch_stats} that training (as the teacher) and `--mode=eval` load."""
import json
import os
from typing import Any, Dict, Tuple

from mixacm_jax.errors import CheckpointError, ConfigError
from mixacm_jax.port import convert, zoo
from mixacm_jax.runtime import checkpoint as ckpt_lib, storage, workdir_lock


def to_checkpoint(convert_cfg, workdir: str) -> Dict[str, Any]:
  """`run.py --mode=convert`: a PyTorch file -> an orbax checkpoint of {params, batch_stats}
  in `workdir/checkpoints` that train (as teacher) and eval load directly. The weights are
  read and checked before anything is written; the workdir is locked while it is."""
  directory = os.path.join(workdir, "checkpoints")
  _check_empty(directory)
  variables, info = _read(convert_cfg)
  with workdir_lock.hold(workdir):
    _check_empty(directory)
    checkpointer = ckpt_lib.Checkpointer(directory, async_save=False)
    checkpointer.save(0, variables)
    checkpointer.close()
    path = os.path.join(workdir, "converted.json")
    with storage.writing("write", path), open(path, "w") as f:
      json.dump(info, f, indent=2)
  return info


def _check_empty(directory: str) -> None:
  if os.path.isdir(directory) and os.listdir(directory):
    raise CheckpointError(f"{directory} already holds checkpoints; choose an empty workdir")


def _read(convert_cfg) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """(variables, info) of the file or zoo entry `convert_cfg` names, strictly checked."""
  if convert_cfg.get("robustbench"):
    if convert_cfg.arch or convert_cfg.source:
      raise ConfigError("set either convert.robustbench (the zoo knows the architecture and "
                        "the file) or convert.arch and convert.source, not both")
    found = zoo.recipe(convert_cfg.robustbench, convert_cfg.dataset, convert_cfg.threat_model)
    if found.get("softmax_ensemble") or found.get("members"):
      raise ConfigError(f"RobustBench's {convert_cfg.robustbench} is an ensemble "
                        f"({len(zoo.weight_files(found, ''))} weight files), used by name, not "
                        f"converted: --config.teacher.robustbench={convert_cfg.robustbench}")
    _, variables, info = zoo.load_entry(convert_cfg.robustbench, convert_cfg.dataset,
                                        convert_cfg.threat_model, convert_cfg.model_dir)
    return variables, info
  if not convert_cfg.arch or not convert_cfg.source:
    raise ConfigError("set --config.convert.robustbench=<RobustBench entry>, or "
                      "--config.convert.arch=<architecture> and "
                      "--config.convert.source=<file.pt|.pth|.safetensors>")
  kwargs = {k: v for k, v in dict(convert_cfg.kwargs).items() if v is not None}  # unset: default
  model, variables, norm = convert.load_pytorch_weights(
      convert_cfg.source, convert_cfg.arch, num_classes=convert_cfg.num_classes,
      image_shape=tuple(convert_cfg.image_shape), **kwargs)
  return variables, {"source": os.path.abspath(convert_cfg.source), "arch": convert_cfg.arch,
                     "num_classes": model.num_classes, "kwargs": kwargs,
                     "mean": norm["mean"], "std": norm["std"]}


def teacher_flags(info: Dict[str, Any], workdir: str) -> str:
  """The flags that use a converted checkpoint as the teacher (its architecture spelled out)."""
  flags = [f"--config.teacher.checkpoint={workdir}", f"--config.teacher.model.name={info['arch']}"]
  flags += [f"--config.teacher.model.kwargs.{k}={_flag_value(v)}"
            for k, v in info["kwargs"].items()]
  flags += [f"--config.teacher.model.{k}='{tuple(info[k])}'" for k in ("mean", "std")
            if info.get(k)]
  return " ".join(flags)


def _flag_value(value) -> str:
  return f"'{tuple(value)}'" if isinstance(value, (list, tuple)) else str(value)
