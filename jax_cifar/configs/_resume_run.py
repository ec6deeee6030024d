"""The config of an existing run for `python -m jax_cifar.train --workdir RUN` without --config
(jax_cifar.cli.run_config_overrides passes this file as `--config <this file>:RUN`): RUN/config.json,
with the keys that decide only what its last launch was allowed to do (train.resume,
train.allow_config_change) back at their defaults, so that a relaunch is not allowed what that
launch was (an allowed change had been allowed again, silently: a review). Overrides change it.
Private (a leading `_`): not a `jax_cifar:NAME` config, since it needs the run's folder."""

from jax_cifar import workdir
from jax_cifar.configs import default

ONE_LAUNCH_KEYS = ('resume', 'allow_config_change')  # Of the train section.


def get_config(run_dir: str):
  config, defaults = workdir.run_config(run_dir), default.get_config()
  for key in ONE_LAUNCH_KEYS:
    config.train[key] = defaults.train[key]
  return config
