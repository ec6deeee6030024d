"""What a user sees in the terminal: the run's own lines, not library INFO logs; bad input as one
`error:` line and a bug with its traceback; log lines above the progress bar, and no pages of
orbax's noise."""

import fcntl
import logging
import os
import pathlib
import pty
import re
import struct
import subprocess
import sys
import termios

import pytest

from jax_cifar import console_logs, errors

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARGS = ['--config.data.source=synthetic', '--config.data.synthetic_size=256',
        '--config.data.val_fraction=0.25', '--config.model.name=simple_cnn', '--config.train.batch_size=32',
        '--config.train.num_epochs=2', '--config.train.log_every_steps=2',
        '--config.checkpoint.every_steps=3']


def _train(workdir, *extra):
  return subprocess.run([sys.executable, '-m', 'jax_cifar.train', '--config', 'jax_cifar:default',
                         '--workdir', str(workdir), *ARGS, *extra],
                        cwd=ROOT, capture_output=True, text=True, check=False)


def _train_in_a_terminal(workdir, *extra) -> subprocess.CompletedProcess:
  """_train with stderr a (pseudo-)terminal, as at a shell: progress bars are drawn as there
  (in a log file a bar under another one is not: tracking.transient_bar)."""
  main, terminal = pty.openpty()
  fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 160, 0, 0))  # (0 x 0: no bars.)
  with subprocess.Popen([sys.executable, '-m', 'jax_cifar.train', '--config', 'jax_cifar:default',
                         '--workdir', str(workdir), *ARGS, *extra], cwd=ROOT, text=True,
                        stdout=subprocess.PIPE, stderr=terminal) as proc:
    os.close(terminal)
    chunks = []
    while True:
      try:
        chunk = os.read(main, 1 << 16)
      except OSError:  # EIO: the process has closed the terminal.
        break
      if not chunk:
        break
      chunks.append(chunk)
    stdout = proc.stdout.read()
  os.close(main)
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout,
                                     b''.join(chunks).decode('utf-8', 'replace'))


@pytest.mark.slow
def test_training_console_shows_start_evaluations_and_summary_but_no_library_info(tmp_path):
  out = _train_in_a_terminal(tmp_path / 'run')
  assert out.returncode == 0, out.stderr[-3000:]
  lines = out.stderr.replace('\r', '\n').splitlines()
  assert not [l for l in lines if re.match(r'I\d{4} ', l)], [l for l in lines if l.startswith('I')][:5]
  assert not [l for l in lines if 'orbax' in l or 'checkpoint_manager' in l]
  assert any(l.startswith('simple_cnn: ') and '12 steps, ' in l and str(tmp_path / 'run') in l
             and 'stops at' not in l for l in lines)
  # Each validation shows its own bar while it runs (it had sat behind a still train bar).
  assert any(l.startswith('val:') and 'img' in l for l in lines), lines
  evals = [l for l in lines if re.match(r'epoch \d+\.\d+ step \d+: val_loss', l)]
  assert len(evals) == 2 and all('(best ' in l for l in evals), evals  # One per epoch.
  assert any(l.startswith('Done at step 12: best val_accuracy ') for l in lines)
  # --verbosity=0 brings the library logs back for debugging.
  out = _train(tmp_path / 'run2', '--verbosity=0', '--config.train.max_steps=7',
               '--config.train.max_steps', '3', '--config.ema.warmup_power=0.5')
  assert out.returncode == 0 and re.search(r'^I\d{4} ', out.stderr, re.M), out.stderr[-2000:]
  first_verbose = out.stderr
  # stderr a pipe, as a cluster's log file: the validation at step 3 draws no bar under the train
  # bar, which there had added a line and a cursor-up escape each second (a log-file review).
  assert 'epoch 0.50 step 3: val_loss' in out.stderr and '\x1b[A' not in out.stderr
  assert not re.search(r'(^|\r)val:', out.stderr, re.M), out.stderr[-2000:]
  # An override given twice is named (absl takes the last one without a word: a walkthrough).
  assert ('--config.train.max_steps is given 2 times (7, 3): the last one, 3, is used'
          in out.stderr), out.stderr[-2000:]
  # ... as a plain warning line (absl's "W1206 11:17:49.641787 ... cli.py:196] " had come before
  # the plain format was set: a bad-input review).
  assert re.search(r'^warning: --config\.train\.max_steps is given 2 times', out.stderr, re.M)
  # A key that does nothing here is named (it had been ignored without a word) ...
  assert "config key 'ema.warmup_power'=0.5 is ignored: there is no EMA" in out.stderr
  # The start line says where a max_steps launch stops (it said only '12 steps': an audit).
  assert re.search(r'^simple_cnn: .* 12 steps \(this launch stops at step 3: train.max_steps\), ',
                   out.stderr, re.M), out.stderr[-2000:]
  # A max_steps the run has passed: it had said 'this launch stops at step 2', then 'Done at 3'.
  # ... and dropping it is no change of the run (it is inert in both configs).
  out = _train(tmp_path / 'run2', '--config.train.max_steps=2', '--config.ema.warmup_power=0.5')
  assert out.returncode == 0 and re.search(
      r'^simple_cnn: .* 12 steps \(train.max_steps=2: this launch, at step 3, trains none\), ',
      out.stderr, re.M) and 'Done at step 3: ' in out.stderr, out.stderr[-2000:]
  # Its warnings plain (absl's "W1205 12:13:54.363783 140567184821120 file.py:94] " had buried
  # them: a review), as with --verbosity=0 they are not.
  assert re.search(r"^W\d{4} .*\] config key 'ema.warmup_power'=0.5 is ignored", first_verbose,
                   re.M), first_verbose[-2000:]
  assert re.search(r"^warning: config key 'ema.warmup_power'=0.5 is ignored: there is no EMA ",
                   out.stderr, re.M) and not re.search(r"^W\d{4} ", out.stderr, re.M), out.stderr


def _fail_or_raise(tmp_path, exception: str):
  script = tmp_path / 'raise.py'
  script.write_text('from jax_cifar import cli, errors, checkpoints\n'
                    'from jax_cifar.evaluation import submission\n'
                    'try:\n'
                    f'  raise {exception}\n'
                    'except Exception as e:\n'
                    '  cli.fail_or_raise(e)\n')
  return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('exception, line', [
    ("errors.ConfigError('train.batch_size=7 is not divisible')",
     'error: train.batch_size=7 is not divisible'),
    ("checkpoints.CheckpointError('no best checkpoint')", 'error: no best checkpoint'),
    ("submission.SubmissionError('3 rows')", 'error: 3 rows'),
    ("PermissionError(13, 'Permission denied', '/x/metrics.jsonl')",
     'error: /x/metrics.jsonl: Permission denied'),
    # A message over several lines (an allowed list, a hint) is still one line.
    ("errors.ConfigError('model.stem=x is unknown\\nallowed: imagenet, cifar')",
     'error: model.stem=x is unknown allowed: imagenet, cifar'),
])
def test_bad_input_is_one_error_line(tmp_path, exception, line):
  proc = _fail_or_raise(tmp_path, exception)
  assert proc.returncode == 1 and proc.stderr.strip() == line and 'Traceback' not in proc.stderr


@pytest.mark.parametrize('exception', ["ValueError('shapes (3,) and (4,) do not match')",
                                       "TypeError('a bug')", "KeyError('params')"])
def test_a_bug_keeps_its_traceback(tmp_path, exception):
  """Only the UserError family (and OS errors about files) become one line: a shape error while
  tracing is a bug, and its traceback is what a bug report needs."""
  proc = _fail_or_raise(tmp_path, exception)
  assert proc.returncode == 1 and 'Traceback' in proc.stderr, proc.stderr
  assert 'error:' not in proc.stderr


def _parked_read(filename: str):
  """A coroutine whose code lives in `filename`, parked at an await, that turns its closing into an
  Exception as orbax's array reads do (serialization._read_array_index_and_device_put)."""
  namespace = {'types': __import__('types')}
  exec(compile('@types.coroutine\n'
               'def _pending():\n'
               '  yield\n'
               'async def read():\n'
               '  try:\n'
               '    await _pending()\n'
               '  except BaseException as e:\n'
               '    raise Exception("Encountered error while reading array index") from e\n',
               filename, 'exec'), namespace)
  coroutine = namespace['read']()
  coroutine.send(None)
  return coroutine


def test_orbax_reads_closed_after_a_failed_restore_print_nothing_but_other_unraisables_do(
    monkeypatch):
  """After a damaged checkpoint's one-line error, orbax's other pending reads were sometimes
  garbage-collected before the process exited, each printing a page of TensorStore spec (an
  audit: 3 of 20 runs). The CLI's hook drops those and tensorstore's closed-loop callbacks, and
  nothing else."""
  import gc  # pylint: disable=import-outside-toplevel
  import types  # pylint: disable=import-outside-toplevel
  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  errors.drop_library_noise()  # As cli.run does.
  orbax_file = os.path.join(os.sep, 'venv', 'site-packages', 'orbax', 'checkpoint', '_src',
                            'serialization', 'serialization.py')
  for filename in (orbax_file, os.path.join(os.sep, 'work', 'my_code.py')):
    coroutine = _parked_read(filename)
    del coroutine
    gc.collect()
  mine = os.path.join(os.sep, 'work', 'my_code.py')
  assert [u.object.cr_code.co_filename for u in seen] == [mine]
  assert isinstance(seen[0].exc_value.__cause__, GeneratorExit)  # The same kind, reported.
  for message, dropped in (('Event loop is closed', True), ('something else', False)):
    before = len(seen)
    sys.unraisablehook(types.SimpleNamespace(exc_value=RuntimeError(message), object=None))
    assert len(seen) == before + (not dropped)


def _unretrieved_task_failure(filename: str) -> None:
  """A task of a coroutine defined in `filename` fails, and nobody asks for its exception."""
  import asyncio  # pylint: disable=import-outside-toplevel
  import gc  # pylint: disable=import-outside-toplevel
  namespace = {}
  source = 'async def read():\n  raise ValueError("NOT_FOUND: an array file")\n'
  exec(compile(source, filename, 'exec'), namespace)  # pylint: disable=exec-used
  loop = asyncio.new_event_loop()
  task = loop.create_task(namespace['read']())
  loop.run_until_complete(asyncio.wait([task]))  # (wait() does not retrieve the exception.)
  loop.close()
  del task
  gc.collect()  # asyncio logs "Task exception was never retrieved" as the task goes.


def test_orbax_tasks_never_retrieved_print_nothing_but_other_tasks_do(caplog):
  """A step the trainer deleted while a notebook read it: the retried load worked, and pages of
  asyncio's "Task exception was never retrieved" for orbax's failed reads followed it (a
  concurrency review). They are dropped; another task's are not."""
  errors.drop_library_noise()  # As every checkpoint read does.
  orbax_file = os.path.join(os.sep, 'venv', 'site-packages', 'orbax', 'checkpoint', '_src',
                            'serialization', 'tensorstore_utils.py')
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    for filename in (orbax_file, os.path.join(os.sep, 'work', 'my_code.py')):
      _unretrieved_task_failure(filename)
  logged = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
  assert len(logged) == 1 and logged[0].startswith('Task exception was never retrieved'), logged
  assert 'my_code.py' in logged[0]


def test_tensorstore_futures_never_retrieved_print_nothing_but_other_futures_do(caplog):
  """A notebook's load_model of a run with a deleted array file raised its one error, then (at
  random, about one load in six) 223 lines of asyncio's "Future exception was never retrieved" for
  tensorstore's reads. Those are dropped; another future's are not."""
  import asyncio  # pylint: disable=import-outside-toplevel
  import gc  # pylint: disable=import-outside-toplevel
  errors.drop_library_noise()  # As every checkpoint read does.
  tensorstore_error = ('NOT_FOUND: Error opening "zarr" driver: Error reading "params.w/.zarray" '
                       'in OCDBT database [tensorstore_spec=\'{"driver":"zarr"}\']')
  with caplog.at_level(logging.ERROR, logger='asyncio'):
    for text in (tensorstore_error, 'my own failure'):
      loop = asyncio.new_event_loop()
      future = loop.create_future()
      future.set_exception(ValueError(text))
      loop.close()
      del future
      gc.collect()  # asyncio logs "Future exception was never retrieved" as the future goes.
  logged = [r.getMessage() for r in caplog.records if r.name == 'asyncio']
  assert len(logged) == 1 and logged[0].startswith('Future exception was never retrieved'), logged
  assert 'my own failure' in logged[0]


def test_log_lines_are_written_above_a_progress_bar_not_glued_to_it():
  """absl's warnings during training (e.g. '3 updates skipped') had been written after the bar's
  text on the bar's own line (an audit)."""
  import io  # pylint: disable=import-outside-toplevel
  import tqdm  # pylint: disable=import-outside-toplevel
  out = io.StringIO()
  stream = console_logs.AboveProgressBars(out)
  with tqdm.tqdm(total=3, file=out, mininterval=0, desc='train') as bar:
    bar.update(1)
    stream.write('W1203 trainer.py:1] 3 updates skipped so far.\n')
    bar.update(1)
  text = out.getvalue()
  before, after = text.split('W1203 trainer.py:1] 3 updates skipped so far.')
  assert 'train' in before and before.endswith('\r'), repr(before[-80:])  # The bar was cleared.
  assert after.startswith('\n') and 'train' in after, repr(after[:80])  # ... and drawn again.


def test_quiet_libraries_keeps_warnings_and_drops_orbax_logs_below_critical(tmp_path):
  """A command shows `warning: ...` lines, and of orbax's own logs only the critical ones, which
  absl aborts on (a failed save reaches the user as one `error:` line; orbax's pages of errors
  would bury it)."""
  library = tmp_path / 'site' / 'orbax' / 'store.py'
  library.parent.mkdir(parents=True)
  library.write_text('from absl import logging\n'
                     'def log():\n'
                     '  logging.warning("orbax warning")\n'
                     '  logging.error("orbax error")\n'
                     'def fail():\n'
                     '  logging.get_absl_logger().critical("orbax critical")\n')
  script = tmp_path / 'command.py'
  script.write_text(f'import sys; sys.path.insert(0, {str(library.parent)!r})\n'
                    'from absl import app, logging\n'
                    'from jax_cifar import console_logs\n'
                    'import store\n'
                    'def main(argv):\n'
                    '  console_logs.quiet_libraries()\n'
                    '  logging.info("an info line")\n'
                    '  logging.warning("own warning")\n'
                    '  logging.error("own error")\n'
                    '  store.log()\n'
                    '  print("logged", flush=True)\n'
                    '  store.fail()\n'
                    'app.run(main, argv=["command"])\n')
  proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=False,
                        timeout=120)
  assert proc.stdout == 'logged\n', proc.stderr[-3000:]  # absl aborts after a critical line.
  lines = proc.stderr.splitlines()
  assert 'warning: own warning' in lines, lines
  assert any(line.endswith('] own error') for line in lines), lines
  assert any(line.endswith('] orbax critical') for line in lines), lines
  for hidden in ('an info line', 'orbax warning', 'orbax error'):
    assert not any(hidden in line for line in lines), (hidden, lines)
