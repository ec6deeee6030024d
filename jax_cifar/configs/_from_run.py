"""The config of an existing run (RUN/config.json), so that `python -m jax_cifar.evaluate --workdir
RUN --config.KEY=VALUE` changes the run's own config: evaluate passes this file as `--config
<this file>:RUN` when overrides come without a --config (jax_cifar.cli.run_config_overrides).
Private (a leading `_`): not a `jax_cifar:NAME` config, since it needs the run's folder."""

from jax_cifar import workdir


def get_config(run_dir: str):
  return workdir.run_config(run_dir)
