"""The default config: a small PGD-AT ResNet-18 on the embedded digits (a robust teacher).

  python run.py --config=configs/default.py --workdir=workdirs/teacher

Its settings are defined in `mixacm_jax/configs/default.py` (shipped with the package, so the
installed `mixacm` command has a default from any directory); every other config builds on it.
"""
from mixacm_jax.configs.default import get_config  # noqa: F401  pylint: disable=unused-import
