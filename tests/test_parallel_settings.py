"""jax_cifar.parallel's multi-process contracts, in one process: what a launcher's environment
hands to jax.distributed.initialize, which settings the processes compare (and which they may
hold each their own), and that a stop by Ctrl-C or sys.exit is agreed on like an error.
(tests/test_multiprocess*.py run the same code as real processes, minutes at a time.)"""

import numpy as np
import pytest

from jax_cifar import errors, parallel
from jax_cifar import workdir as workdir_lib
from jax_cifar.configs import default


@pytest.fixture
def initialize(monkeypatch):
  """The calls made to jax.distributed.initialize, which starts nothing here."""
  for var in ('SLURM_NTASKS', 'TPU_WORKER_HOSTNAMES', 'JAX_LOCAL_DEVICE_IDS',
              parallel.DISTRIBUTED_VAR):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')
  calls = []
  monkeypatch.setattr(parallel.jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  return calls


@pytest.mark.parametrize('index', [0, 1])
def test_the_launchers_environment_is_what_jax_distributed_initialize_gets(monkeypatch, initialize,
                                                                          index):
  """scripts/launch_local.py's (and SLURM's, TPU pods') contract: each process its own id, the
  start-up wait of JAX_CIFAR_CONNECT_TIMEOUT_S (JAX's own 300 s had applied instead)."""
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '127.0.0.1:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '2')
  monkeypatch.setenv('JAX_PROCESS_ID', str(index))
  monkeypatch.setenv(parallel.CONNECT_TIMEOUT_VAR, '45')
  parallel.maybe_initialize_distributed()
  assert initialize == [{'coordinator_address': '127.0.0.1:1234', 'num_processes': 2,
                         'process_id': index, 'initialization_timeout': 45}]


@pytest.mark.parametrize('env, named', [
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'}, 'JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1'),
    ({'JAX_PROCESS_ID': '3'}, 'JAX_PROCESS_ID=3'),
    ({'JAX_NUM_PROCESSES': '4'}, 'JAX_NUM_PROCESSES=4')])
def test_several_processes_asked_for_without_a_coordinator_are_refused(monkeypatch, initialize,
                                                                       env, named):
  """A forgotten JAX_COORDINATOR_ADDRESS had let every host train alone as process 0 of 1 (a
  new-user walkthrough); one process's own JAX_NUM_PROCESSES=1 JAX_PROCESS_ID=0 still runs, as
  does one process given its GPUs (launch_slurm.sh's PER_NODE=1 on one node)."""
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(var, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(errors.ConfigError, match=(
      rf'^{named} without JAX_COORDINATOR_ADDRESS: set it \(host:port of process 0\) for every '
      rf'process, or unset {" and ".join(env)} to run as one process$')):
    parallel.maybe_initialize_distributed()
  for k in env:
    monkeypatch.delenv(k)
  monkeypatch.setenv('JAX_NUM_PROCESSES', '01')  # (1, as a number.)
  monkeypatch.setenv('JAX_PROCESS_ID', '0')
  monkeypatch.setenv('JAX_LOCAL_DEVICE_IDS', '0,1,2,3')
  parallel.maybe_initialize_distributed()
  assert initialize == []  # One process: nothing to start.


def _as_process_0_of_2(monkeypatch, mine: dict, other: dict) -> None:
  """same_settings_everywhere(mine) as process 0 of 2 whose process 1 holds `other`: its values
  are those the same function gathers from `other`."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(parallel.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(parallel.jax, 'process_index', lambda: 0)
  recorded = []
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda x: recorded.append(np.asarray(x)) or np.stack([x, x]))
  parallel.same_settings_everywhere(other, 'configs')
  theirs = iter(recorded)
  monkeypatch.setattr(multihost_utils, 'process_allgather',
                      lambda x: np.stack([np.asarray(x), next(theirs)]))
  parallel.same_settings_everywhere(mine, 'configs')


def test_each_host_may_name_its_own_paths_and_wandb_but_nothing_else(monkeypatch):
  mine = workdir_lib.flatten(default.get_config().to_dict())
  other = {**mine, 'data.dir': '/a', 'data.tfds_data_dir': 'gs://b', 'model.pretrained': '/c',
           'model.init_from': '/d', 'wandb.mode': 'online', 'wandb.name': 'x'}
  _as_process_0_of_2(monkeypatch, mine, other)  # Node-local copies; process 0's wandb alone.
  with pytest.raises(errors.ConfigError, match=r'given different configs: optim\.lr differ'):
    _as_process_0_of_2(monkeypatch, mine, {**other, 'optim.lr': 123.0})
  with pytest.raises(errors.ConfigError, match='different sets of keys'):  # Another jax-cifar.
    _as_process_0_of_2(monkeypatch, mine, {**mine, 'train.new_key': 1})


@pytest.mark.parametrize('stop', [KeyboardInterrupt, SystemExit])
def test_a_stop_inside_fail_together_is_agreed_on_then_raised(monkeypatch, stop):
  """Ctrl-C or sys.exit on one process: the others must learn of it, not wait in a collective."""
  told = []
  monkeypatch.setattr(parallel.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(parallel, 'any_process', lambda flag: told.append(flag) or flag)
  with pytest.raises(stop):
    with parallel.fail_together('writing x'):
      raise stop()
  assert told == [True]


@pytest.mark.parametrize('env, message', [
    ({'JAX_NUM_PROCESSES': '²'}, 'JAX_NUM_PROCESSES=² without JAX_COORDINATOR_ADDRESS'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '²', 'JAX_PROCESS_ID': '0'},
     "JAX_NUM_PROCESSES must be a positive integer, got '²'"),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_LOCAL_DEVICE_IDS': '0,٤'},
     "JAX_LOCAL_DEVICE_IDS must be device numbers such as 0,1,2,3, got '0,٤'"),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '1', 'JAX_PROCESS_ID': '0',
      parallel.CONNECT_TIMEOUT_VAR: '٤٥'},
     "JAX_CIFAR_CONNECT_TIMEOUT_S must be a positive whole number of seconds, got '٤٥'"),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '1' * 5000,
      'JAX_PROCESS_ID': '0'}, 'JAX_NUM_PROCESSES must be a positive integer, got'),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '9' * 10,  # (Past int32.)
      'JAX_PROCESS_ID': '0'}, f"JAX_NUM_PROCESSES must be a positive integer, got '{'9' * 10}'"),
    ({'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '1', 'JAX_PROCESS_ID': '0',
      parallel.CONNECT_TIMEOUT_VAR: '9' * 30},
     f"JAX_CIFAR_CONNECT_TIMEOUT_S must be a positive whole number of seconds, got '{'9' * 30}'")])
def test_digits_that_are_not_ascii_are_refused_in_one_line(monkeypatch, initialize, env, message):
  """'²' is a digit to str.isdigit but not to int(): JAX_NUM_PROCESSES=² had been a ValueError
  traceback (a security review); 5,000 digits were past int()'s limit and 30 a TypeError inside
  JAX (its diff review). ASCII digits only, at most 9 ('٤٥' is 45 to int(), refused all the same).
  A SLURM_NTASKS of them is not a Slurm job."""
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    monkeypatch.delenv(var, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  with pytest.raises(errors.ConfigError) as e:
    parallel.maybe_initialize_distributed()
  assert message in str(e.value) and initialize == []
  for var in env:
    monkeypatch.delenv(var)
  monkeypatch.setenv('SLURM_NTASKS', '²')
  parallel.maybe_initialize_distributed()
  assert initialize == []  # One process: nothing to start.
