"""scripts/launch_local.py and the distributed start-up settings, without starting JAX's runtime."""

import contextlib
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
LAUNCH = [sys.executable, str(ROOT / 'scripts' / 'launch_local.py')]


def _launch(args: list[str], code: str, timeout: float = 60,
            env: dict | None = None) -> subprocess.CompletedProcess:
  return subprocess.run([*LAUNCH, *args, '--', sys.executable, '-c', code], capture_output=True,
                        text=True, timeout=timeout, cwd=ROOT, env=env)


def test_each_process_gets_its_id_the_shared_coordinator_and_cpu_devices():
  code = ('import os; print(*(os.environ.get(k) for k in ("JAX_PROCESS_ID", "JAX_NUM_PROCESSES", '
          '"JAX_COORDINATOR_ADDRESS", "JAX_NUM_CPU_DEVICES", "JAX_PLATFORMS")))')
  proc = _launch(['--num_processes', '3', '--cpu_devices', '2', '--port', '23456'], code)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  lines = sorted(proc.stdout.splitlines())
  assert lines == [f'[p{i}] {i} 3 127.0.0.1:23456 2 cpu' for i in range(3)]


@pytest.mark.parametrize('status, said', [
    (3, 'a process exited with status 3'),
    # A SIGTERM's save had read as a failure (a cluster walkthrough).
    (75, 'a process stopped after saving its step (status 75: relaunch to resume)')])
def test_a_failing_process_stops_the_others_and_sets_the_exit_status(tmp_path, status, said):
  ready = tmp_path / 'p0_ready'
  code = ('import os, pathlib, signal, sys, time\n'
          f'ready = pathlib.Path({str(ready)!r})\n'
          'if os.environ["JAX_PROCESS_ID"] == "1":\n'
          '  while not ready.exists(): time.sleep(0.01)  # Fail only once p0 listens for SIGTERM.\n'
          f'  sys.exit({status})\n'
          'def stopped(*_):\n'
          '  print("stopped by SIGTERM", flush=True); sys.exit(0)\n'
          'signal.signal(signal.SIGTERM, stopped)\n'
          'ready.touch()\n'
          'signal.pause()  # Never ends by itself: the launcher must stop it.\n')
  proc = _launch(['--num_processes', '2'], code, timeout=300)
  assert proc.returncode == status, proc.stdout + proc.stderr
  assert f'[launch] {said}; stopping the others' in proc.stdout
  assert '[p0] stopped by SIGTERM' in proc.stdout  # Stopped, not waited for.


@pytest.mark.parametrize('signum, each_gets', [(signal.SIGINT, 'SIGINT'),
                                               (signal.SIGHUP, 'SIGTERM')])
def test_a_terminals_signal_reaches_each_process_once(tmp_path, signum, each_gets):
  """Ctrl-C goes to the terminal's whole process group: the copies had been in the launcher's,
  so each got it twice (directly and forwarded), and a trainer took the second for "stop now,
  without saving" (an audit). A hang-up stops them as SIGTERM does (saving)."""
  code = ('import os, pathlib, signal, time\n'
          'got = []\n'
          'for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):\n'
          '  signal.signal(s, lambda n, _: got.append(signal.Signals(n).name))\n'
          f'pathlib.Path({str(tmp_path)!r}, "ready" + os.environ["JAX_PROCESS_ID"]).touch()\n'
          'while not got: time.sleep(0.01)  # The first; then time for a second to arrive.\n'
          'time.sleep(1)\n'
          # (Two SIGINTs close together often reach the handler as one: the group says why.)
          'group = "own" if os.getpgrp() != os.getpgid(os.getppid()) else "the launcher\'s"\n'
          'print("got", *got, "in", group, "group", flush=True)\n')
  proc = subprocess.Popen([*LAUNCH, '--num_processes', '2', '--', sys.executable, '-c', code],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
  try:
    deadline = time.time() + 60
    while not all((tmp_path / f'ready{i}').exists() for i in range(2)):
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.05)
    os.killpg(proc.pid, signum)  # As a terminal does: the launcher's group.
    out = proc.communicate(timeout=60)[0]
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)
  assert sorted(l for l in out.splitlines() if 'got' in l) == [
      f'[p{i}] got {each_gets} in own group' for i in range(2)], out


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_launcher_alone_reaches_every_process(tmp_path, signum):
  """A scheduler's scancel, or kill PID: the launcher forwards it."""
  code = ('import os, pathlib, signal, sys\n'
          'def stopped(n, _):\n'
          '  print("stopped by", signal.Signals(n).name, flush=True); sys.exit(0)\n'
          'signal.signal(signal.SIGTERM, stopped); signal.signal(signal.SIGINT, stopped)\n'
          f'pathlib.Path({str(tmp_path)!r}, os.environ["JAX_PROCESS_ID"]).touch()\n'
          'signal.pause()\n')
  proc = subprocess.Popen([*LAUNCH, '--num_processes', '2', '--', sys.executable, '-c', code],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
  try:
    deadline = time.time() + 60
    while not all((tmp_path / str(i)).exists() for i in range(2)):
      assert time.time() < deadline and proc.poll() is None
      time.sleep(0.05)
    proc.send_signal(signum)
    out = proc.communicate(timeout=60)[0]
  finally:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)
    # (The copies run in groups of their own: none left running if the test failed.)
    subprocess.run(['pkill', '-KILL', '-f', str(tmp_path)], check=False)
  assert proc.returncode == 0 and sorted(out.splitlines()) == [
      f'[p{i}] stopped by {signal.Signals(signum).name}' for i in range(2)], out


def test_without_cpu_devices_each_process_gets_gpus_of_its_own():
  """Without --cpu_devices every copy had been shown every GPU (JAX does so when the coordinator
  is given by hand), so on a 2-GPU machine both opened both and the first collective failed in
  NCCL (a review). One process keeps the caller's choice; CPU devices need none."""
  code = 'import os; print(os.environ.get("JAX_LOCAL_DEVICE_IDS"))'
  for extra, want in (([], ['0', '1']), (['--gpus_per_process', '2'], ['0,1', '2,3'])):
    proc = _launch(['--num_processes', '2', *extra], code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(proc.stdout.splitlines()) == [f'[p{i}] {ids}' for i, ids in enumerate(want)]
  for args in (['--num_processes', '1'], ['--num_processes', '2', '--cpu_devices', '2']):
    proc = _launch(args, code)
    assert proc.returncode == 0 and set(proc.stdout.split()) - {'[p0]', '[p1]'} == {'None'}, (
        proc.stdout + proc.stderr)


def test_the_callers_gpu_ids_are_shared_out_not_replaced():
  """A caller's JAX_LOCAL_DEVICE_IDS=4,5,6,7 had been overwritten with 0 and 1 (a review): the
  copies ran on GPUs the caller had not given them."""
  code = 'import os; print(os.environ.get("JAX_LOCAL_DEVICE_IDS"))'
  env = dict(os.environ, JAX_LOCAL_DEVICE_IDS='4,5,6,7')
  proc = _launch(['--num_processes', '2', '--gpus_per_process', '2'], code, env=env)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert sorted(proc.stdout.splitlines()) == ['[p0] 4,5', '[p1] 6,7']
  proc = _launch(['--num_processes', '2'], code, env=env)
  assert proc.returncode == 2 and proc.stdout == '', proc.stdout
  assert ('JAX_LOCAL_DEVICE_IDS=4,5,6,7 must list 2 different GPU ids (2 processes x '
          '--gpus_per_process 1)' in proc.stderr and 'Traceback' not in proc.stderr), proc.stderr
  proc = _launch(['--num_processes', '2'], code, env=dict(env, JAX_LOCAL_DEVICE_IDS='4,4'))
  assert proc.returncode == 2 and 'JAX_LOCAL_DEVICE_IDS=4,4 must list 2 different' in proc.stderr


@pytest.mark.parametrize('cpu_devices', [0, 2])
def test_cpu_devices_give_each_process_that_many_and_pass_xla_flags_on_as_they_are(tmp_path,
                                                                                 cpu_devices):
  """--cpu_devices N: N CPU devices per process, also where XLA_FLAGS holds another host device
  count, and XLA_FLAGS reaches the processes as it was given (it had been dropped whole: a user's
  dump folder, the tests' faster compiles); 0 leaves the backend alone."""
  flags = f'--xla_force_host_platform_device_count=8 --xla_dump_to="{tmp_path}/a  b"'
  env = dict(os.environ, XLA_FLAGS=flags)
  env.pop('JAX_PLATFORMS', None)
  env.pop('JAX_NUM_CPU_DEVICES', None)
  code = ('import os, jax; print(repr(os.environ.get("XLA_FLAGS")), '
          'os.environ.get("JAX_PLATFORMS"), len(jax.devices("cpu")))')
  proc = subprocess.run([*LAUNCH, '--num_processes', '1', '--cpu_devices', str(cpu_devices), '--',
                         sys.executable, '-c', code], capture_output=True, text=True, timeout=120,
                        cwd=ROOT, env=env)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines() == ([f'[p0] {flags!r} cpu 2'] if cpu_devices else
                                      [f'[p0] {flags!r} None 8'])


def test_the_exit_status_is_the_failing_processs_as_a_shell_reports_it(tmp_path):
  """The copy that failed, not one the launcher then stopped (SIGTERM: 143); death by signal N
  is 128 + N; a command that cannot run, 126."""
  ready = tmp_path / 'ready'
  code = ('import os, pathlib, sys, time\n'
          f'ready = pathlib.Path({str(ready)!r})\n'
          'if os.environ["JAX_PROCESS_ID"] == "1":\n'
          '  while not ready.exists(): time.sleep(0.01)\n'
          '  sys.exit(3)\n'
          'ready.touch()\n'
          'while True: time.sleep(1)  # SIGTERM\'s default: killed.\n')
  assert _launch(['--num_processes', '2'], code, timeout=120).returncode == 3
  killed = 'import os, signal; os.kill(os.getpid(), signal.SIGKILL)'
  assert _launch(['--num_processes', '1'], killed).returncode == 137
  script = tmp_path / 'not_executable'
  script.write_text('#!/bin/sh\necho hi\n')
  proc = subprocess.run([*LAUNCH, '--', str(script)], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 126 and 'cannot start' in proc.stderr, proc.stderr


def test_launch_without_a_command_is_a_usage_error():
  proc = subprocess.run(LAUNCH + ['--num_processes', '2'], capture_output=True, text=True)
  assert proc.returncode == 2 and 'give the command after --' in proc.stderr


COORDINATED = {'JAX_COORDINATOR_ADDRESS': '127.0.0.1:1', 'JAX_NUM_PROCESSES': '1',
               'JAX_PROCESS_ID': '0'}


@pytest.mark.parametrize('values, message', [
    ({**COORDINATED, 'JAX_NUM_PROCESSES': 'two'},
     "JAX_COORDINATOR_ADDRESS is set, so JAX_NUM_PROCESSES must be a positive integer, got 'two'"),
    # An audit: these had been tracebacks from JAX or int().
    ({**COORDINATED, 'JAX_NUM_PROCESSES': '0'}, "JAX_NUM_PROCESSES must be a positive integer, got '0'"),
    ({**COORDINATED, 'JAX_PROCESS_ID': '3'}, 'JAX_PROCESS_ID=3 must be below JAX_NUM_PROCESSES=1'),
    ({**COORDINATED, 'JAX_PROCESS_ID': '1'}, 'JAX_PROCESS_ID=1 must be below JAX_NUM_PROCESSES=1'),
    ({**COORDINATED, 'JAX_LOCAL_DEVICE_IDS': 'a'},
     "JAX_LOCAL_DEVICE_IDS must be device numbers such as 0,1,2,3, got 'a'"),
    ({'SLURM_NTASKS': '2'}, 'SLURM_NTASKS=2: start each process with srun, or set '
                            'JAX_COORDINATOR_ADDRESS'),
    # Asked for JAX's own cluster detection (a Cloud TPU VM pod) where there is no cluster.
    ({'JAX_CIFAR_DISTRIBUTED': '1'}, 'JAX_CIFAR_DISTRIBUTED=1, but JAX found no cluster it knows '
                                     '(a Cloud TPU VM pod, Kubernetes, Open MPI): unset it to run '
                                     'as one process, or set JAX_COORDINATOR_ADDRESS'),
    ({'JAX_CIFAR_DISTRIBUTED': 'yes'}, "JAX_CIFAR_DISTRIBUTED must be 1 (find the cluster with "
                                       "jax.distributed.initialize()) or 0, got 'yes'"),
    # A forgotten coordinator: each host had trained alone (a new-user walkthrough).
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'},
     'JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1 without JAX_COORDINATOR_ADDRESS: set it'),
])
def test_bad_multi_process_environment_is_a_one_line_error(tmp_path, values, message):
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'SLURM_'))}
  env.update(values, JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'jax_cifar.train', '--config',
                         str(ROOT / 'configs' / 'smoke.py'), '--workdir', str(tmp_path / 'run')],
                        env=env, capture_output=True, text=True, cwd=ROOT, timeout=120)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert proc.returncode == 1 and len(errors) == 1 and message in errors[0], proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'run').exists()


def test_a_bad_launch_environment_of_a_resume_is_not_blamed_on_the_runs_config(tmp_path):
  """A relaunch with --workdir alone (README's) under JAX_NUM_PROCESSES=2 without a coordinator
  had been told to change the run's config.json, which holds no such setting (a message review)."""
  import json  # pylint: disable=import-outside-toplevel
  from jax_cifar.configs import default  # pylint: disable=import-outside-toplevel
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'config.json').write_text(json.dumps(default.get_config().to_dict()))
  env = {k: v for k, v in os.environ.items() if not k.startswith(('JAX_', 'SLURM_'))}
  env.update(JAX_NUM_PROCESSES='2', JAX_PLATFORMS='cpu')
  proc = subprocess.run([sys.executable, '-m', 'jax_cifar.train', '--workdir', str(run)], env=env,
                        capture_output=True, text=True, cwd=ROOT, timeout=120)
  errors = [l for l in proc.stderr.splitlines() if l.startswith('error: ')]
  assert proc.returncode == 1 and errors == [
      'error: JAX_NUM_PROCESSES=2 without JAX_COORDINATOR_ADDRESS: set it (host:port of process 0) '
      'for every process, or unset JAX_NUM_PROCESSES to run as one process'], proc.stderr[-3000:]


@pytest.mark.parametrize('value, starts', [('1', True), ('0', False), ('', False)])
def test_jax_cifar_distributed_1_lets_jax_find_the_cluster(monkeypatch, value, starts):
  """On a Cloud TPU VM pod (outside GKE) no variable names the other workers: JAX reads them from
  the metadata server when asked to. Nothing but the start-up wait is passed, so JAX detects."""
  from jax_cifar import parallel  # pylint: disable=g-import-not-at-top
  for var in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'TPU_WORKER_HOSTNAMES',
              'JAX_LOCAL_DEVICE_IDS'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv(parallel.DISTRIBUTED_VAR, value)
  monkeypatch.setenv('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')  # (leaves jax.config as it is)
  calls = []
  monkeypatch.setattr(parallel.jax.distributed, 'initialize', lambda **kw: calls.append(kw))
  parallel.maybe_initialize_distributed()
  assert calls == ([{'initialization_timeout': parallel.connect_timeout_s()}] if starts else [])


def test_jax_cifar_distributed_1_without_a_metadata_server_is_one_line(monkeypatch):
  """JAX's GCE TPU detection raises RuntimeError (requests: OSError) where no metadata server
  answers, e.g. on a TPU outside Google Cloud: one error line, not a traceback."""
  from jax_cifar import errors, parallel  # pylint: disable=g-import-not-at-top
  for var in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv(parallel.DISTRIBUTED_VAR, '1')
  monkeypatch.setenv('JAX_CPU_COLLECTIVES_IMPLEMENTATION', 'gloo')

  def no_metadata(**_):
    raise RuntimeError("Getting metadata['agent-worker-number'] failed for 6 tries")

  monkeypatch.setattr(parallel.jax.distributed, 'initialize', no_metadata)
  with pytest.raises(errors.ConfigError, match=r"^cannot start as one of several processes \("
                     r"Getting metadata\['agent-worker-number'\] failed for 6 tries\); "
                     r'JAX_CIFAR_DISTRIBUTED=1, but JAX found no cluster it knows'):
    parallel.maybe_initialize_distributed()


def test_start_up_wait_is_600_s_or_the_environments_whole_seconds(monkeypatch):
  from jax_cifar import errors, parallel  # pylint: disable=g-import-not-at-top
  monkeypatch.delenv(parallel.CONNECT_TIMEOUT_VAR, raising=False)
  assert parallel.connect_timeout_s() == 600
  monkeypatch.setenv(parallel.CONNECT_TIMEOUT_VAR, ' 45 ')
  assert parallel.connect_timeout_s() == 45
  for bad in ('0', '-5', '1.5', 'ten', ''):
    monkeypatch.setenv(parallel.CONNECT_TIMEOUT_VAR, bad)
    try:
      parallel.connect_timeout_s()
    except errors.ConfigError as e:
      assert str(e) == (f'JAX_CIFAR_CONNECT_TIMEOUT_S must be a positive whole number of seconds, '
                        f'got {bad!r}')
    else:
      raise AssertionError(f'{bad!r} was accepted')
  # The shared-workdir check's wait takes 0 (look once) and refuses the rest alike.
  monkeypatch.delenv(parallel.SHARED_WAIT_VAR, raising=False)
  assert parallel.shared_wait_s() == 60
  monkeypatch.setenv(parallel.SHARED_WAIT_VAR, '0')
  assert parallel.shared_wait_s() == 0
  monkeypatch.setenv(parallel.SHARED_WAIT_VAR, '-1')
  with pytest.raises(errors.ConfigError, match=r"^JAX_CIFAR_SHARED_WAIT_S must be a whole number "
                     r"of seconds, got '-1'$"):
    parallel.shared_wait_s()


@pytest.mark.parametrize('args, status, message', [
    (['--cpu_devices', '-1', '--', 'true'], 2, '--cpu_devices must be 0'),
    (['--port', '99999', '--', 'true'], 2, '--port must be 0'),
    (['--gpus_per_process', '0', '--', 'true'], 2, '--gpus_per_process must be at least 1'),
    (['--', 'jax-cifar-no-such-command'], 127, "cannot start 'jax-cifar-no-such-command'"),
])
def test_launch_refuses_bad_arguments_in_one_line(args, status, message):
  """These had passed through to JAX, or ended in a FileNotFoundError traceback (an audit)."""
  proc = subprocess.run(LAUNCH + args, capture_output=True, text=True, timeout=60, cwd=ROOT)
  assert proc.returncode == status and message in proc.stderr, proc.stderr
  assert 'Traceback' not in proc.stderr


@pytest.mark.parametrize('tasks, gpus, per_node, ok', [
    ('4(x2)', '8', '0', False), ('8(x2)', '8', '0', True), ('4', 'h100:4', '0', True),
    ('4(x2)', '4', '1', True)])
def test_slurm_script_checks_its_tasks_against_the_gpus_before_srun(tmp_path, tasks, gpus,
                                                                   per_node, ok):
  """With 8 GPUs per node and the script's own 4 tasks per node, srun had refused the step with
  its own words (an audit). The step names its whole task count: srun takes the allocation's
  SLURM_NTASKS over a smaller --ntasks-per-node, so PER_NODE=1 had started 4 processes per node
  on the same GPUs (an audit), and it names each task's CPUs. The script runs here with a
  stand-in srun that prints its command and the GPUs each process is given. The script makes no
  WORKDIR: the trainer does, and removes it when it refuses the launch (the script's `mkdir -p`
  had left an empty folder behind)."""
  (tmp_path / 'srun').write_text('#!/bin/sh\necho "srun $* [$JAX_LOCAL_DEVICE_IDS]"\n')
  (tmp_path / 'srun').chmod(0o755)
  env = dict(os.environ, SLURM_GPUS_ON_NODE=gpus, SLURM_NTASKS_PER_NODE=tasks, PER_NODE=per_node,
             SLURM_JOB_NUM_NODES='2', SLURM_NTASKS='8', SLURM_CPUS_PER_TASK='8',
             PATH=f'{tmp_path}{os.pathsep}{os.environ["PATH"]}')
  env.pop('JAX_LOCAL_DEVICE_IDS', None)
  proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'launch_slurm.sh'), 'cfg.py',
                         str(tmp_path / 'run')], env=env, capture_output=True, text=True, timeout=60)
  n = 1 if per_node == '1' else int(gpus.split(':')[-1])
  assert not (tmp_path / 'run').exists()
  if ok:  # Each task's CPUs named (srun of Slurm 22.05-23.02 does not take them from sbatch): the
    # allocation's CPUs on a node (8 per allocated task) over the tasks started there (a review).
    devices = '0,1,2,3' if per_node == '1' else ''
    cpus = 8 * int(tasks.split('(')[0]) // n
    assert proc.returncode == 0 and (
        f'srun --kill-on-bad-exit=1 --label --ntasks={2 * n} --ntasks-per-node={n} '
        f'--cpus-per-task={cpus} '
        'python -m jax_cifar.train --config cfg.py '
        f'--workdir {tmp_path / "run"} [{devices}]') in proc.stdout, (proc.stdout, proc.stderr)
    env.pop('SLURM_CPUS_PER_TASK')  # An salloc without -c: no CPUs to share out, none named.
    proc = subprocess.run(['bash', str(ROOT / 'scripts' / 'launch_slurm.sh'), 'cfg.py',
                           str(tmp_path / 'run')], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0 and '--cpus-per-task' not in proc.stdout, proc.stdout + proc.stderr
  else:
    assert proc.returncode == 2 and proc.stdout == '' and (
        '8 GPUs per node need --ntasks-per-node=8' in proc.stderr), proc.stderr


@pytest.mark.parametrize('process, failing', [(0, 0), (1, 0), (0, None), (0, 1)])
def test_fail_together_raises_the_error_where_it_happened_and_one_line_elsewhere(
    monkeypatch, process, failing):
  """Process `process` of 2, the write failing on process `failing` (None: on none). The gathered
  flag is what the other process would contribute (tests/test_multiprocess.py runs the real one)."""
  from jax_cifar import errors, parallel  # pylint: disable=import-outside-toplevel
  gathered = []
  monkeypatch.setattr(parallel.jax, 'process_count', lambda: 2)
  monkeypatch.setattr(parallel.jax, 'process_index', lambda: process)
  monkeypatch.setattr(parallel, 'any_process',
                      lambda flag: gathered.append(flag) or flag or failing not in (process, None))

  def block():
    with parallel.fail_together('writing x.csv'):
      if failing == process:
        raise OSError(28, 'No space left on device', 'x.csv')
    return 'went on'

  if failing is None:
    assert block() == 'went on'
  elif failing == process:
    with pytest.raises(OSError, match='No space left on device'):
      block()
  else:
    with pytest.raises(errors.UserError, match=r'^another process failed while writing x.csv '
                                               rf'\(its error says why\); process {process} stops too$'):
      block()
  assert gathered == [failing == process]  # Every process reached the agreement once.


def test_a_multi_process_run_whose_stop_checks_are_far_apart_is_warned():
  """Several processes act on a stop signal only at log steps (stopping.requested): nothing had
  related their spacing to a scheduler's grace period (a multi-host review). The note comes when
  they are more than SLOW_STOP_S apart at the run's speed, with one process never."""
  from jax_cifar.training import stopping  # pylint: disable=import-outside-toplevel
  assert stopping.SLOW_STOP_S < 120  # Inside launch_slurm.sh's grace, with room for the save.
  assert '#SBATCH --signal=TERM@120' in (ROOT / 'scripts' / 'launch_slurm.sh').read_text()
  # 1,000 steps of 128 at 1,280 img/s: 100 s between checks.
  note = stopping.slow_stop_note(1000, 128, 1280.0, processes=2)
  assert note == (
      'with 2 processes a stop signal (a preemption, a time limit) is acted on at log steps: every '
      'train.log_every_steps=1000 steps, 100 s apart at this speed, more than 60 s; a scheduler '
      'that kills soon after its signal (scripts/launch_slurm.sh asks for 120 s) can end the run '
      'before it saves: lower train.log_every_steps')
  assert stopping.slow_stop_note(1000, 128, 1280.0, processes=1) is None  # Stops at any step.
  assert stopping.slow_stop_note(500, 128, 1280.0, processes=2) is None  # 50 s apart.
  assert stopping.slow_stop_note(20, 128, 0.0, processes=2) is None  # No speed measured.
