"""The one entry point: `python run.py --config=configs/default.py --workdir=/tmp/run`
(the same as the installed `mixacm` command)."""
from mixacm_jax.cli.main import entry

if __name__ == "__main__":
  entry()
