"""Multi-process JAX on one machine: 2 processes x 2 CPU devices against 1 process x 4 CPU devices.

Both runs use the same global mesh size (4 devices), global batch, data order and PRNG keys, so the
only difference is the order in which cross-device sums are added (gloo between processes vs.
in-process), i.e. float32 rounding. Gradients of convolutions followed by BatchNorm are sums with
heavy cancellation, and early training amplifies their rounding step by step: between 1 and 4
devices in ONE process the parameters differ by 0.8% of their movement after 6 steps and 6% after
10 (measured). So the comparison is short (4 steps, then 2 more after a restore), uses SGD with
momentum (AdamW's first steps turn rounding in near-zero gradients into full-size steps), and
states its tolerances relative to what the steps move:
  train losses and validation numbers: rtol 1e-5            (measured: <= 2.1e-6);
  parameters: |a - b| <= 5% of |b - init| (L2, all leaves)  (measured after 6 steps: 1.6%);
  BatchNorm statistics: the same bound                       (measured: 0.002%);
  momentum: |a - b| <= 10% of |b|                             (measured: 3.0%).
Training on the wrong shard, or restoring without the momentum, differs by far more than that.

A second test signals ONE of two processes and checks that both stop after the same step, save
it, and exit 75 (with per-process stopping, the collective save deadlocks: checked by hand). A third
starts one process 35 s after the other at its first collective, as a loaded machine compiles.
"""

import json
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time
import types

import jax
import numpy as np
import pytest

from jax_cifar.configs import smoke
from jax_cifar import interrupt, optim, parallel, tracking
from jax_cifar.evaluation import submission
from jax_cifar import state as state_lib
from jax_cifar.data import cifar100, ood

from conftest import load_script, needs_proc, TOO_LARGE

ROOT = pathlib.Path(__file__).resolve().parent.parent
RTOL, UPDATE_RTOL, MOMENTUM_RTOL = 1e-5, 0.05, 0.1
TIMEOUT = 900

pytestmark = pytest.mark.slow


def _overrides(data_dir) -> dict:
  return {'data.dir': str(data_dir), 'data.train_limit': 512, 'data.eval_limit': 300,
          'train.batch_size': 32, 'train.eval_batch_size': 64, 'train.log_every_steps': 2,
          'train.eval_every_epochs': 0.125, 'checkpoint.every_steps': 2,
          'optim.name': 'sgd', 'optim.lr': 0.005}


def _command(module: str, args: list[str], overrides: dict, processes: int):
  """(argv, env) running `python -m module` as `processes` processes of 4 // processes CPU devices."""
  cmd = [sys.executable, '-m', module, '--config', str(ROOT / 'configs' / 'smoke.py'), *args]
  cmd += [f'--config.{k}={v}' for k, v in overrides.items()]
  env = dict(os.environ)  # (XLA_FLAGS kept: JAX_NUM_CPU_DEVICES wins over a count there.)
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    env.pop(var, None)
  if processes > 1:
    cmd = [sys.executable, str(ROOT / 'scripts' / 'launch_local.py'), '--num_processes',
           str(processes), '--cpu_devices', str(4 // processes), '--', *cmd]
  else:
    env.update(JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='4')
  return cmd, env


def _run(module: str, args: list[str], overrides: dict, processes: int) -> str:
  cmd, env = _command(module, args, overrides, processes)
  proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return proc.stdout


def _train(workdir, data_dir, processes: int, max_steps: int) -> None:
  _run('jax_cifar.train', ['--workdir', str(workdir)],
       {**_overrides(data_dir), 'train.max_steps': max_steps}, processes)


def _config(data_dir):
  config = smoke.get_config()
  for key, value in _overrides(data_dir).items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def _leaves(state) -> dict:
  leaves = jax.tree_util.tree_leaves_with_path(jax.device_get(
      (state.params, state.batch_stats, state.opt_state)))
  return {jax.tree_util.keystr(p): np.asarray(v, np.float64) for p, v in leaves}


def _restore(workdir, data_dir, step: int) -> tuple[int, dict]:
  """The run's checkpoint of `step` (its step folder: not necessarily the latest one)."""
  folder = pathlib.Path(workdir) / 'checkpoints' / 'latest' / str(step)
  state, _, restored = state_lib.restore(_config(data_dir), str(workdir), str(folder),
                                         parallel.make_mesh())
  return restored, _leaves(state)


def _l2(arrays) -> float:
  return float(np.sqrt(sum(np.sum(x ** 2) for x in arrays)))


def _assert_same_run(dir_a, dir_b, data_dir, step: int) -> None:
  config = _config(data_dir)
  init = _leaves(state_lib.init_state(config, optim.make_optimizer(config.optim, 1, 1)[0],
                                    parallel.make_mesh())[0])
  step_a, a = _restore(dir_a, data_dir, step)
  step_b, b = _restore(dir_b, data_dir, step)
  assert step_a == step_b == step
  assert a.keys() == b.keys() == init.keys()
  for prefix in ('[0]', '[1]'):  # params, batch_stats
    keys = [k for k in a if k.startswith(prefix)]
    diff, moved = _l2(a[k] - b[k] for k in keys), _l2(b[k] - init[k] for k in keys)
    assert moved > 0 and diff <= UPDATE_RTOL * moved, (prefix, diff, moved)
  momentum = [k for k in a if k.startswith('[2]') and a[k].ndim]
  diff, norm = _l2(a[k] - b[k] for k in momentum), _l2(b[k] for k in momentum)
  assert momentum and diff <= MOMENTUM_RTOL * norm, (diff, norm)


def _errors_first(out: str) -> str:
  """The error, fatal and warning log lines and `error:` lines of a multi-process run's output
  (`[pN] E1201 ...`, `[pN] warning: ...`), then its last 3,000 characters."""
  causes = [l for l in out.splitlines()
            if re.search(r'\] [EFW]\d{4} |\] warning: |error|Error|Terminating', l)]
  return '\n'.join(causes[:40]) + '\n...\n' + out[-3000:]


def _rows(workdir) -> dict:
  return {(r['step'], k): v for r in tracking.read_metrics(workdir) for k, v in r.items()
          if k in ('train_loss', 'train_accuracy', 'val_loss', 'val_accuracy', 'val_top5_accuracy')}


def test_the_mesh_puts_each_processs_devices_side_by_side():
  """A process's contiguous rows of the global batch must land on its own devices: with devices
  numbered round-robin over hosts (a platform's choice), ordering by id alone would interleave
  them. The ordering used for the mesh, on stand-in devices of 3 processes x 2."""
  fake = [types.SimpleNamespace(id=i, process_index=i % 3) for i in range(6)]
  assert [(d.process_index, d.id) for d in parallel.process_major(fake)] == [
      (0, 0), (0, 3), (1, 1), (1, 4), (2, 2), (2, 5)]
  assert list(parallel.make_mesh().devices) == jax.devices()  # One process: as before.


def test_processes_driving_different_numbers_of_devices_are_one_clear_error(monkeypatch):
  """Each process reads an equal slice of every batch, so 3 + 1 devices cannot work; JAX's
  own error came only at the first batch, in array shapes. Stand-in devices of 2 processes."""
  fake = [types.SimpleNamespace(id=i, process_index=int(i == 3)) for i in range(4)]
  monkeypatch.setattr(parallel.jax, 'devices', lambda: fake)
  with pytest.raises(parallel.errors.ConfigError,
                     match=r'^the processes drive different numbers of devices \(process 0: 3, '
                           r'process 1: 1\); each process reads an equal slice'):
    parallel.make_mesh()


def test_two_processes_train_save_restore_and_evaluate_like_one(tmp_path, cifar_dir):
  two, one = tmp_path / 'two_processes', tmp_path / 'one_process'
  _train(two, cifar_dir, processes=2, max_steps=4)
  _train(one, cifar_dir, processes=1, max_steps=6)  # Saves steps 2, 4, 6 (keeps 4 and 6).
  assert not list(two.glob('.shared-check-*'))  # The shared-workdir check's file is removed.
  rows_two, rows_one = _rows(two), _rows(one)
  assert rows_two.keys() == {(step, k) for step, k in rows_one if step <= 4}
  assert {k for _, k in rows_two} >= {'train_loss', 'val_accuracy'}  # Validation at steps 2, 4.
  for key in rows_two:
    np.testing.assert_allclose(rows_two[key], rows_one[key], rtol=RTOL, err_msg=str(key))
  # Only process 0 writes the metrics: one row per logged step.
  steps = [r['step'] for r in tracking.read_metrics(two) if 'train_loss' in r]
  assert steps == [2, 4]
  _assert_same_run(two, one, cifar_dir, step=4)

  # The two-process checkpoint restores in a single process and training goes on as the
  # one-process run went on without stopping.
  _train(two, cifar_dir, processes=1, max_steps=6)
  _assert_same_run(two, one, cifar_dir, step=6)
  rows_two, rows_one = _rows(two), _rows(one)
  for key in rows_one:
    np.testing.assert_allclose(rows_two[key], rows_one[key], rtol=RTOL, err_msg=str(key))

  # Evaluation and OOD prediction in two processes: every image predicted exactly once, same
  # numbers and the same submission file as one process. Each OOD file holds 35 different real
  # test images (5 severities x 7), which neither the eval batch (64) nor its per-process half divides.
  ood_dir = tmp_path / 'ood'
  ood_dir.mkdir()
  test_images = cifar100.load_split(cifar_dir, 'test').images
  for d in range(ood.NUM_DISTORTIONS):
    np.save(ood_dir / ood.distortion_file(d), test_images[35 * d:35 * (d + 1)])
  results = {}
  for processes in (2, 1):
    csv = tmp_path / f'submission_{processes}.csv'
    out = _run('jax_cifar.evaluate', ['--workdir', str(two), '--checkpoint', 'latest',
                                      '--ood_dir', str(ood_dir), '--submission', str(csv)],
               _overrides(cifar_dir), processes)
    lines = [l.split('] ', 1)[-1] for l in out.splitlines()]  # launch_local prefixes [pI].
    results[processes] = json.loads([l for l in lines if l.startswith('{')][-1])
    # One result line per run (process 0's), as a script reading the output expects.
    printed = [l for l in out.splitlines() if l.split('] ', 1)[-1].startswith('{')]
    assert len(printed) == 1 and printed[0].startswith('[p0] ' if processes == 2 else '{'), out
    assert submission.check_submission(csv, ood_dir)
  for key in ('test_accuracy', 'test_loss', 'test_top5_accuracy', 'val_accuracy', 'val_loss'):
    np.testing.assert_allclose(results[2][key], results[1][key], rtol=RTOL, err_msg=key)
  assert results[2]['test_count'] == results[1]['test_count'] == 300
  # Predictions vary between images, so a shifted, dropped or repeated row would change the file.
  labels = [line.rsplit(',', 1)[1] for line in (tmp_path / 'submission_1.csv').read_text().split()[1:]]
  assert len(labels) == 19 * 35 and len(set(labels)) >= 5
  assert (tmp_path / 'submission_2.csv').read_bytes() == (tmp_path / 'submission_1.csv').read_bytes()


def test_sigterm_to_one_process_stops_all_at_the_same_saved_step(tmp_path, cifar_dir):
  """Saving is collective: a signal to process 1 alone must stop process 0 after the same step."""
  workdir = tmp_path / 'run'
  # The first test's schedule (smoke's 4 epochs) and so its compiled programs, found in the
  # compilation cache; max_steps does not change the schedule.
  overrides = {**_overrides(cifar_dir), 'checkpoint.every_steps': 1000}
  cmd, env = _command('jax_cifar.train', ['--workdir', str(workdir)], overrides, processes=2)
  env[interrupt.TEST_HOOK_VAR] = 'train_step:3:SIGTERM:1'  # Process 1 only, right after step 3.
  proc = subprocess.run(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, timeout=TIMEOUT, check=False)
  out = proc.stdout
  # Both saved and exited with the preemption status. (A failure shows each process's error and
  # fatal-log lines first: a process that aborts prints a long stack after its cause.)
  assert proc.returncode == 75, _errors_first(out)
  saved = {int(m.group(1)): (m.group(2), int(m.group(3))) for m in re.finditer(
      r'\[p(\d)\].*Received (SIGTERM|a signal on another process): saved step (\d+)', out)}
  assert saved.keys() == {0, 1}, out[-3000:]
  assert saved[0][0] == 'a signal on another process'  # Process 0 was never signalled itself.
  assert saved[0][1] == saved[1][1], saved
  # Process 1's line is the plain one process 0 prints, not an absl log record.
  assert re.search(r'^\[p1\] Received SIGTERM: saved step', out, re.M), out[-3000:]
  step = saved[0][1]
  on_disk = sorted(int(d.name) for d in (workdir / 'checkpoints' / 'latest').iterdir()
                   if d.name.isdigit())
  assert on_disk[-1] == step == 4  # Signalled after step 3; agreed at the next log step.
  assert [r['step'] for r in tracking.read_metrics(workdir) if 'train_loss' in r][-1] == step


def test_a_process_late_at_its_first_collective_still_joins_the_others():
  """XLA:CPU connects gloo at the first collective over a group of devices and gives up when the
  other processes are not there within 30 s ("Gloo context initialization failed"): a process that
  compiles its first step that much later than the others (a loaded machine) failed the run.
  maybe_initialize_distributed connects them while they are in step.

  The lateness is a sleep because what it has to beat is gloo's fixed 30 s, not another thread:
  no race, and load only makes process 1 later (the start-up barrier waits up to 10 minutes)."""
  late_s = 35
  code = textwrap.dedent(f"""
      import time
      import jax, jax.numpy as jnp, numpy as np
      from jax_cifar import parallel
      parallel.maybe_initialize_distributed()
      if jax.process_index() == 1:
        time.sleep({late_s})
      mesh = parallel.make_mesh()
      # A program of its own (not the one that connected): rows 1, 1 from p0 and 2, 2 from p1.
      x = jax.make_array_from_process_local_data(parallel.batch_sharded(mesh), np.full(
          (jax.local_device_count(), 3), jax.process_index() + 1.0, np.float32))
      mean = jax.jit(lambda a: jnp.mean(a, axis=0), out_shardings=parallel.replicated(mesh))(x)
      late = parallel.any_process(jax.process_index() == 1)
      parallel.sync('done')
      print('mean', *np.asarray(mean).tolist(), 'any', late, flush=True)
  """)
  env = dict(os.environ)
  proc = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'launch_local.py'),
                         '--num_processes', '2', '--cpu_devices', '2', '--', sys.executable, '-c',
                         code], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        text=True, timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, _errors_first(proc.stdout)
  results = sorted(l for l in proc.stdout.splitlines() if ' mean ' in l)
  assert results == [f'[p{i}] mean 1.5 1.5 1.5 any True' for i in (0, 1)], proc.stdout[-3000:]


@needs_proc
def test_a_process_that_never_reaches_the_start_is_one_clear_error_after_the_wait(tmp_path):
  """A process that joined the job but never reaches the start-up barrier (here it stops itself
  with SIGSTOP at the test hook, as a hung node would) makes the others exit with one `error:`
  line after JAX_CIFAR_CONNECT_TIMEOUT_S, instead of hanging or a traceback."""
  launch = load_script('launch_local')
  base = {k: v for k, v in os.environ.items() if k != interrupt.TEST_HOOK_VAR}
  base[parallel.CONNECT_TIMEOUT_VAR] = '5'
  cmd = [sys.executable, '-m', 'jax_cifar.train', '--config', str(ROOT / 'configs' / 'default.py'),
         '--workdir', str(tmp_path / 'run'), '--config.data.source=synthetic',
         '--config.model.name=simple_cnn']
  port, procs = launch.free_port(), []
  try:
    for i in (0, 1):
      env = launch.process_env(base, i, 2, port, 2)
      if i == 1:
        env[interrupt.TEST_HOOK_VAR] = 'connect:0:SIGSTOP:1'
      procs.append(subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, text=True,
                                    # Process 1's output is never read: a pipe could fill and block it.
                                    stderr=subprocess.PIPE if i == 0 else subprocess.DEVNULL))
    _, err = procs[0].communicate(timeout=TIMEOUT)
    # Process 1 reached the hook and stopped there (it did not crash); on a loaded machine it may
    # get there only after process 0 gave up.
    stat = pathlib.Path(f'/proc/{procs[1].pid}/stat')
    state = lambda: stat.read_text().rsplit(')', 1)[1].split()[0]
    deadline = time.monotonic() + 120
    while state() not in ('T', 'Z') and time.monotonic() < deadline:
      time.sleep(0.1)
    assert state() == 'T', state()
  finally:
    for p in procs:
      p.kill()
      p.wait()
  lines = [l for l in err.splitlines() if l.startswith('error:')]
  assert procs[0].returncode == 1 and len(lines) == 1 and 'Traceback' not in err, err[-3000:]
  assert lines[0].startswith(
      'error: process 0 of 2: not every process reached the start within 5 s '
      '(JAX_CIFAR_CONNECT_TIMEOUT_S); are all JAX_NUM_PROCESSES of them running? ('), lines[0]


def test_a_write_that_fails_on_process_0_stops_every_process_at_once(tmp_path):
  """Process 0 alone appends metrics.jsonl; here its file-size limit is reached (EFBIG, as on a
  full disk) at the second row, and both processes then reach a collective, as the next train step
  is. Without the agreement, process 1 waited in that collective until JAX's timeouts (a
  multi-host review); now both stop with one line each, process 0's naming the file."""
  launch = load_script('launch_local')
  code = textwrap.dedent(f"""
      import resource, signal, sys
      import jax
      from jax_cifar import errors, parallel, tracking
      from jax_cifar.configs import default
      parallel.maybe_initialize_distributed()
      config = default.get_config()
      config.wandb.mode = 'disabled'
      try:
        writer = tracking.MetricsWriter({str(tmp_path)!r}, config, resume_step=0)
        if jax.process_index() == 0:
          signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Writes past the limit fail instead.
          resource.setrlimit(resource.RLIMIT_FSIZE, (300, 300))
        for step in (1, 2, 3):
          writer.write(step, {{'note': 'x' * 200}})
          parallel.any_process(False)  # Where the next train step's collectives would be.
      except Exception as e:
        print('stopped:', errors.user_message(e), flush=True)
        sys.exit(1)
  """)
  base = {k: v for k, v in os.environ.items() if k != interrupt.TEST_HOOK_VAR}
  port, procs = launch.free_port(), []
  try:
    for i in (0, 1):
      procs.append(subprocess.Popen([sys.executable, '-c', code], cwd=ROOT, text=True,
                                    env=launch.process_env(base, i, 2, port, 1),
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    start = time.monotonic()
    out = [p.communicate(timeout=120)[0] for p in procs]
    seconds = time.monotonic() - start
  finally:
    for p in procs:
      p.kill()
      p.wait()
  stopped = [[l for l in o.splitlines() if l.startswith('stopped:')] for o in out]
  assert [p.returncode for p in procs] == [1, 1], out
  metrics = tmp_path / 'metrics.jsonl'
  assert stopped[0] == [f'stopped: {metrics}: {TOO_LARGE}'], out[0]
  assert stopped[1] == [f'stopped: another process failed while writing {metrics} (its error says '
                        'why); process 1 stops too'], out[1]
  print(f'both processes stopped {seconds:.1f} s after they started')


@pytest.mark.parametrize('what, flags', [
    ('checking model.pretrained / model.init_from',
     ['--config.model.pretrained=/nonexistent/weights']),
    ('checking model.pretrained / model.init_from', ['--config.model.init_from=/nonexistent/run']),
    ('reading the data', ['--config.data.dir=/nonexistent/data'])])
def test_an_input_one_process_cannot_read_stops_every_process_with_one_line(
    tmp_path, what, flags, request):
  """Weights or data on storage one host does not see: that process had stopped with one line,
  the other with a gloo traceback and then JAX's abort about 100 s later (a cluster audit).
  (Each host's own path: process 0 reads the real data, process 1 a folder it cannot see; a
  source that differs between processes is refused before anything is read.)"""
  if what == 'reading the data':
    data_dir = request.getfixturevalue('cifar_dir')
    flags, first = ['--config.data.source=local'] + flags, [
        '--config.data.source=local', f'--config.data.dir={data_dir}']
  else:
    first = []
  launch = load_script('launch_local')
  base = {k: v for k, v in os.environ.items() if k != interrupt.TEST_HOOK_VAR}
  cmd = [sys.executable, '-m', 'jax_cifar.train', '--config', str(ROOT / 'configs' / 'default.py'),
         '--workdir', str(tmp_path / 'run'), '--config.data.source=synthetic',
         '--config.data.synthetic_size=320', '--config.data.val_fraction=0.2',
         '--config.model.name=simple_cnn', '--config.train.batch_size=32']
  port, procs = launch.free_port(), []
  try:
    for i in (0, 1):
      procs.append(subprocess.Popen(cmd + (flags if i == 1 else first), cwd=ROOT, text=True,
                                    env=launch.process_env(base, i, 2, port, 1),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    errs = [p.communicate(timeout=120)[1] for p in procs]
  finally:
    for p in procs:
      p.kill()
      p.wait()
  lines = [[l for l in e.splitlines() if l.startswith('error:')] for e in errs]
  assert [p.returncode for p in procs] == [1, 1], errs
  assert not any('Traceback' in e for e in errs), errs
  assert lines[0] == [f'error: another process failed while {what} (its error says why); process 0 '
                      'stops too'], errs[0][-3000:]
  assert len(lines[1]) == 1 and '/nonexistent/' in lines[1][0], errs[1][-3000:]

