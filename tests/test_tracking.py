"""wandb really runs (offline, no mock): its run file holds the metrics of metrics.jsonl, an empty
WANDB_MODE does not stop it, and a resumed training run continues the same wandb run. (The last
test replaces wandb.init to check what an online start is given.)"""

import json
import os
import pathlib
import shutil
import struct
import sys
import zlib

import numpy as np
import pytest
import tqdm

from _train_cli import train
from conftest import require_module
from jax_cifar import config_validation, tracking
from jax_cifar.configs import default

wandb_pb2 = require_module('wandb.proto.wandb_internal_pb2')  # (It moves: fails under CI.)

FIRST_STEPS, RESUMED_STEPS = 3, 5
_BLOCK, _HEADER = 32 * 1024, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def wandb_records(path: pathlib.Path) -> list:
  """The Record protobufs of a run-ID.wandb file (LevelDB log framing, crc32 of type + payload)."""
  data = path.read_bytes()
  assert data[:4] == b':W&B' and struct.unpack('<H', data[4:6])[0] == 0xBEE1, data[:7]
  records, pos, parts = [], _HEADER, []
  while pos + _HEADER <= len(data):
    if _BLOCK - pos % _BLOCK < _HEADER:  # A block's tail too short for a header is padding.
      pos += _BLOCK - pos % _BLOCK
      continue
    crc, length, kind = struct.unpack('<IHB', data[pos:pos + _HEADER])
    payload = data[pos + _HEADER:pos + _HEADER + length]
    if length == 0 and kind == 0:  # Zero padding at the end of a block being written.
      break
    assert len(payload) == length and zlib.crc32(bytes([kind]) + payload) == crc, (path, pos)
    pos += _HEADER + length
    parts.append(payload)
    assert (kind in (_FULL, _FIRST)) == (len(parts) == 1), (path, pos, kind)
    if kind in (_FULL, _LAST):
      record = wandb_pb2.Record()
      record.ParseFromString(b''.join(parts))
      records.append(record)
      parts = []
  assert not parts, f'{path} ends inside a record'
  return records


def wandb_history(path: pathlib.Path) -> dict[int, dict]:
  """{training step: {key: value}} of the history (wandb.log) records in a run file: the training
  step is a logged metric (wandb's own step counts the rows)."""
  out = {}
  for record in wandb_records(path):
    if record.WhichOneof('record_type') == 'history':
      items = {item.key or '/'.join(item.nested_key): json.loads(item.value_json)
               for item in record.history.item}
      out.setdefault(items['step'], {}).update(items)
  return out


def wandb_x_axes(path: pathlib.Path) -> dict[str, str]:
  """{metric name or glob: the metric it is charted against} of a run file's define_metric records."""
  return {r.metric.name or r.metric.glob_name: r.metric.step_metric for r in wandb_records(path)
          if r.WhichOneof('record_type') == 'metric'}


def wandb_run_ids(path: pathlib.Path) -> set[str]:
  return {r.run.run_id for r in wandb_records(path) if r.WhichOneof('record_type') == 'run'}


def _env(tmp_path: pathlib.Path, wandb_mode: str | None) -> dict:
  """A training process's environment: the given WANDB_MODE, wandb's folders in tmp_path, and
  no WANDB_SERVICE, which an in-process test's wandb sets while its service runs (a child given
  it attaches to that service rather than starting its own, as a user's training run does)."""
  env = {k: v for k, v in os.environ.items() if k not in ('WANDB_MODE', 'WANDB_SERVICE')}
  if wandb_mode is not None:
    env['WANDB_MODE'] = wandb_mode
  for var in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):  # Keep $HOME clean.
    env[var] = str(tmp_path / 'wandb_home')
  return env


@pytest.fixture(scope='module')
def offline_run(tmp_path_factory):
  """offline_run(WANDB_MODE or None for unset): (workdir, finished process) of a 3-step run."""
  runs = {}

  def get(wandb_mode):
    if wandb_mode not in runs:
      base = tmp_path_factory.mktemp('wandb')
      workdir = base / 'run'
      # A tag of config_validation's longest: real wandb must take it (one longer had turned
      # wandb off for the whole run; an audit).
      tag = 't' * config_validation.WANDB_TAG_MAX
      out = train(workdir, '--config.wandb.mode=offline', f'--config.train.max_steps={FIRST_STEPS}',
                  f"--config.wandb.tags=('{tag}',)", env=_env(base, wandb_mode))
      runs[wandb_mode] = workdir, out
    return runs[wandb_mode]
  return get


def _train_losses(workdir: pathlib.Path) -> dict[int, float]:
  return {r['step']: r['train_loss'] for r in tracking.read_metrics(workdir) if 'train_loss' in r}


def _assert_logged(history: dict[int, dict], losses: dict[int, float]) -> None:
  logged = {step: row['train_loss'] for step, row in history.items() if 'train_loss' in row}
  assert logged == pytest.approx(losses, rel=1e-6)


@pytest.mark.parametrize('wandb_mode', ['', None], ids=['WANDB_MODE=', 'WANDB_MODE-unset'])
def test_offline_wandb_run_holds_the_metrics_of_metrics_jsonl(offline_run, wandb_mode):
  workdir, out = offline_run(wandb_mode)
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'wandb could not start' not in out.stderr and 'wandb.log failed' not in out.stderr
  run_id = (workdir / 'wandb_run_id').read_text().strip()
  folders = sorted((workdir / 'wandb').glob('offline-run-*'))
  assert [f.name.rsplit('-', 1)[1] for f in folders] == [run_id], folders
  run_file = folders[0] / f'run-{run_id}.wandb'
  assert wandb_run_ids(run_file) == {run_id}
  losses = _train_losses(workdir)
  assert sorted(losses) == list(range(1, FIRST_STEPS + 1))
  _assert_logged(wandb_history(run_file), losses)


def test_a_damaged_wandb_run_id_starts_a_new_wandb_run_with_a_warning(offline_run, tmp_path):
  """A wandb_run_id wandb refuses had cost the resumed launch wandb altogether (a bad-input
  review)."""
  first, _ = offline_run(None)
  workdir = tmp_path / 'run'
  shutil.copytree(first, workdir, symlinks=True)
  (workdir / 'wandb_run_id').write_text('abc def/ghi\n')
  out = train(workdir, '--config.wandb.mode=offline', f'--config.train.max_steps={RESUMED_STEPS}',
              env=_env(tmp_path, None))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'wandb could not start' not in out.stderr, out.stderr[-3000:]
  assert "holds 'abc def/ghi', which wandb refuses as a run id" in out.stderr, out.stderr[-3000:]
  run_id = (workdir / 'wandb_run_id').read_text().strip()
  assert run_id != 'abc def/ghi'
  assert wandb_run_ids(next((workdir / 'wandb').glob(f'offline-run-*-{run_id}')) /
                       f'run-{run_id}.wandb') == {run_id}


def test_resumed_training_run_continues_the_same_wandb_run(offline_run, tmp_path):
  first, _ = offline_run(None)
  workdir = tmp_path / 'run'
  shutil.copytree(first, workdir, symlinks=True)
  run_id = (workdir / 'wandb_run_id').read_text().strip()
  out = train(workdir, '--config.wandb.mode=offline', f'--config.train.max_steps={RESUMED_STEPS}',
              env=_env(tmp_path, None))
  assert out.returncode == 0, out.stderr[-3000:]
  assert 'wandb could not start' not in out.stderr
  assert (workdir / 'wandb_run_id').read_text().strip() == run_id
  folders = sorted((workdir / 'wandb').glob('offline-run-*'))
  assert len(folders) == 2 and all(f.name.endswith(f'-{run_id}') for f in folders), folders
  files = [f / f'run-{run_id}.wandb' for f in folders]
  assert all(wandb_run_ids(f) == {run_id} for f in files)
  histories = sorted((wandb_history(f) for f in files), key=min)  # The launches, in step order.
  assert [sorted(h) for h in histories] == [list(range(1, FIRST_STEPS + 1)),
                                            list(range(FIRST_STEPS + 1, RESUMED_STEPS + 1))]
  losses = _train_losses(workdir)
  assert sorted(losses) == list(range(1, RESUMED_STEPS + 1))
  _assert_logged({**histories[0], **histories[1]}, losses)
  # Each launch charts every metric against the training step, which wandb's own step is not (a
  # resumed launch's re-logged steps, below the run's current wandb step, had been dropped).
  assert all(wandb_x_axes(f).get('*') == 'step' for f in files), [wandb_x_axes(f) for f in files]
  # The runs table's summary holds the run's best validation so far, across launches (it had shown
  # the last one: a wandb review): each launch's last summary record, the best of metrics.jsonl up
  # to its end.
  rows = tracking.read_metrics(workdir)
  for f, end in zip(files, (FIRST_STEPS, RESUMED_STEPS)):
    summaries = [json.loads(u.value_json) for r in wandb_records(f)
                 if r.WhichOneof('record_type') == 'summary'
                 for u in r.summary.update if u.key == 'best_val_accuracy']
    best = max(r['val_accuracy'] for r in rows if 'val_accuracy' in r and r['step'] <= end)
    assert summaries and summaries[-1] == pytest.approx(best), (summaries, best)


def test_lines_that_are_not_metrics_rows_are_skipped_and_the_file_kept(tmp_path, caplog):
  """A line `5` or undecodable bytes in metrics.jsonl had stopped a resume with an
  AttributeError / UnicodeDecodeError traceback (an audit). They are skipped, the rows kept, and
  the resumed run rewrites the file only after keeping it as it was."""
  rows = [{'step': 1, 'train_loss': 4.0}, {'step': 2, 'train_loss': 3.5}, {'step': 3, 'x': 1}]
  text = (json.dumps(rows[0]) + '\n5\n').encode() + b'\xff\xfe\n' + (
      json.dumps(rows[1]) + '\n{"step": "2"}\n' + json.dumps(rows[2]) + '\n{"torn').encode()
  (tmp_path / 'metrics.jsonl').write_bytes(text)
  assert tracking.read_metrics(tmp_path) == rows
  config = default.get_config()
  config.wandb.mode = 'disabled'
  writer = tracking.MetricsWriter(tmp_path, config, resume_step=2)
  writer.close()
  assert tracking.read_metrics(tmp_path) == rows[:2]
  assert (tmp_path / 'metrics.damaged.jsonl').read_bytes() == text
  said = [r.getMessage() for r in caplog.records]  # The reader's and the writer's, one wording.
  assert sum('skipped 3 line(s) that are not metrics rows (line 2, 3, 5)' in m for m in said) == 1
  assert any('leaves out 3 line(s) that are not metrics rows (line 2, 3, 5)' in m
             and 'metrics.damaged.jsonl' in m for m in said), said


def test_a_resume_rewrites_numbers_beyond_float_range_as_null_so_lines_stay_strict_json(tmp_path):
  """A hand-edited 400-digit value is read as infinite; the resume's rewrite had then written
  `Infinity`, which strict JSON readers refuse (the diff review). A bare NaN (Python's json
  writes one; an older or a hand-made file may hold it) is written back as null too (a mutation
  audit: keeping NaN passed)."""
  (tmp_path / 'metrics.jsonl').write_text('{"step": 1, "train_loss": %s}\n'
                                          '{"step": 2, "train_loss": NaN}\n' % ('9' * 400))
  config = default.get_config()
  config.wandb.mode = 'disabled'
  tracking.MetricsWriter(tmp_path, config, resume_step=2).close()

  def not_strict(name):
    raise ValueError(f'{name} is not strict JSON')

  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert [json.loads(l, parse_constant=not_strict) for l in lines] == [
      {'step': 1, 'train_loss': None}, {'step': 2, 'train_loss': None}]


def test_online_wandb_gets_a_short_start_timeout_and_a_disabled_one_names_a_set_wandb_mode(
    tmp_path, monkeypatch, caplog):
  """Online without a network, wandb's own 90 s start timeout had held each launch that long
  (30 s now: 18 s measured end to end with 5 s); WANDB_MODE=offline had been ignored without a
  word while wandb.mode was 'disabled' (an audit). wandb.init is replaced here (fault injection:
  a real online start without a network takes the whole timeout); the tests above run it."""
  import wandb  # pylint: disable=import-outside-toplevel  (a dependency)
  seen = {}

  def init(**kwargs):
    seen.update(kwargs)
    raise wandb.errors.CommError('Timed out')

  monkeypatch.setattr(wandb, 'init', init)
  config = default.get_config()
  config.wandb.mode = 'online'
  assert tracking._start_wandb(config, tmp_path, resume=False) is None  # pylint: disable=protected-access
  assert seen['settings'].init_timeout == tracking.WANDB_INIT_TIMEOUT_S == 30
  config.wandb.mode = 'disabled'
  monkeypatch.setenv('WANDB_MODE', 'offline')
  seen.clear()
  with caplog.at_level('WARNING'):
    assert tracking._start_wandb(config, tmp_path, resume=False) is None  # pylint: disable=protected-access
  assert not seen  # Disabled: wandb.init is never called.
  assert any('WANDB_MODE=offline is not read' in r.getMessage()
             and '--config.wandb.mode=offline' in r.getMessage() for r in caplog.records)


def test_the_progress_bars_elapsed_time_never_goes_back_and_its_rate_leaves_validation_out():
  """A log line redraws the bar during a validation; tqdm's unpause() then took the time since
  the last print off the elapsed time, so the next draw showed less (01:16 -> 01:09 after each
  validation: a walkthrough). A fake clock: 10 steps in 10 s, a 60 s validation with a log line
  in it, then 10 more steps in 10 s."""
  import io  # pylint: disable=g-import-not-at-top
  import tqdm  # pylint: disable=g-import-not-at-top
  now = [0.0]
  bar = tqdm.tqdm(total=40, file=io.StringIO(), mininterval=1.0)  # As progress_bar's, drawn.
  bar._time = lambda: now[0]  # pylint: disable=protected-access
  bar.start_t = bar.last_print_t = 0.0
  shown = []

  def steps(n):
    for _ in range(n):
      now[0] += 1.0
      bar.update(1)
      shown.append(bar.format_dict['elapsed'])

  steps(10)
  now[0] += 30.0
  bar.refresh()  # A log line in the validation redraws the bar.
  shown.append(bar.format_dict['elapsed'])
  now[0] += 30.0
  tracking.after_pause(bar)
  steps(10)
  assert shown == sorted(shown) and shown[-1] == 80.0  # Wall time, never back.
  assert bar.format_dict['rate'] == pytest.approx(1.0)  # 1 step/s: the 60 s left out.
  bar.close()


def test_a_non_finite_metric_is_written_as_null_so_every_line_is_strict_json(tmp_path):
  """NaN/inf (a skipped step's loss) are written as null: a bare NaN or Infinity is not JSON, and
  strict readers (jq, JavaScript, most JSON libraries) refuse the whole file."""
  config = default.get_config()
  config.wandb.mode = 'disabled'
  writer = tracking.MetricsWriter(tmp_path, config, resume_step=0)
  writer.write(1, {'train_loss': np.float32('nan'), 'grad_norm': float('inf'), 'lr': 0.5})
  writer.close()

  def refuse(constant):
    raise ValueError(f'not JSON: {constant}')
  rows = [json.loads(line, parse_constant=refuse)
          for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert rows == [{'step': 1, 'train_loss': None, 'grad_norm': None, 'lr': 0.5}]


def _written_run_file(workdir: pathlib.Path) -> pathlib.Path:
  """The run file of WORKDIR's finished offline wandb run, once wandb's service has written it.
  wandb.finish() only tells the service the run is done (a message it does not wait on); the
  service writes the last records and closes the file on its own time, and under load the file
  had held only its 7-byte header when read at once (1 of 180 runs, beside 3 busy cores). A
  process ending waits for the service (wandb's atexit teardown), as wandb.teardown() does here."""
  import wandb  # pylint: disable=import-outside-toplevel
  wandb.teardown()
  run_id = (workdir / 'wandb_run_id').read_text().strip()
  (folder,) = (workdir / 'wandb').glob('offline-run-*')
  return folder / f'run-{run_id}.wandb'


def _offline_run(tmp_path, monkeypatch, name='my-run'):
  """(WORKDIR `name`, a config) for a MetricsWriter with a real offline wandb run, in this process."""
  for var in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):  # Keep $HOME clean.
    monkeypatch.setenv(var, str(tmp_path / 'wandb_home'))
  monkeypatch.delenv('WANDB_MODE', raising=False)
  workdir = tmp_path / name
  workdir.mkdir()
  config = default.get_config()
  config.wandb.mode = 'offline'
  return workdir, config


def test_a_fresh_writer_starts_a_new_wandb_run_named_after_the_workdir_and_finishes_it(
    tmp_path, monkeypatch):
  """In one Python process (a notebook's train_and_evaluate): the run is named after the workdir,
  holds the rows at their steps, and close() finishes it (an unfinished run is what the next
  wandb.init of the process returns). A fresh start (resume_step 0) never continues the run id a
  killed earlier launch left, whose logged steps would hide the new ones (a mutation audit)."""
  import wandb  # pylint: disable=import-outside-toplevel
  workdir, config = _offline_run(tmp_path, monkeypatch)
  (workdir / 'wandb_run_id').write_text('stale0run\n')
  writer = tracking.MetricsWriter(workdir, config, resume_step=0)
  assert writer.wandb_run is not None
  writer.write(1, {'train_loss': 2.5})
  writer.write(2, {'train_loss': 2.0, 'lr': np.float32(0.1)})
  writer.close()
  assert wandb.run is None  # Finished.
  run_id = (workdir / 'wandb_run_id').read_text().strip()
  assert run_id != 'stale0run'
  run_file = _written_run_file(workdir)
  records = wandb_records(run_file)
  runs = [r.run for r in records if r.WhichOneof('record_type') == 'run']
  assert {r.run_id for r in runs} == {run_id} and {r.display_name for r in runs} == {'my-run'}
  assert any(r.WhichOneof('record_type') == 'exit' for r in records)
  history = wandb_history(run_file)
  assert {s: h['train_loss'] for s, h in history.items() if 'train_loss' in h} == {1: 2.5, 2: 2.0}
  # The training step is a metric; wandb's own step counts the rows (test_resumed_... says why).
  assert [(h['step'], h['_step']) for _, h in sorted(history.items())] == [(1, 0), (2, 1)]


def test_a_wandb_run_id_that_is_not_text_starts_a_new_wandb_run_with_a_warning(
    tmp_path, monkeypatch, caplog):
  """Undecodable bytes in wandb_run_id had stopped a resumed launch with a UnicodeDecodeError
  traceback (a security review): wandb's troubles never stop training."""
  workdir, config = _offline_run(tmp_path, monkeypatch)
  (workdir / 'wandb_run_id').write_bytes(b'\xff\xfe\x00abc')
  with caplog.at_level('WARNING'):
    writer = tracking.MetricsWriter(workdir, config, resume_step=3)
  try:
    assert writer.wandb_run is not None
    new_id = writer.wandb_run.id
  finally:
    writer.close()
  assert (workdir / 'wandb_run_id').read_text() == new_id + '\n'
  said = [r.getMessage() for r in caplog.records]
  assert any(m.endswith('wandb_run_id cannot be read (not text): this launch starts a new wandb '
                        'run.') for m in said), said


def test_a_failing_wandb_log_is_warned_about_once_and_metrics_jsonl_goes_on(
    tmp_path, monkeypatch, caplog):
  """wandb.log raising (its service gone) turns wandb off with one warning; later rows are
  written to metrics.jsonl without a warning each (a mutation audit)."""
  workdir, config = _offline_run(tmp_path, monkeypatch)
  writer = tracking.MetricsWriter(workdir, config, resume_step=0)
  run = writer.wandb_run
  try:
    def broken(*args, **kwargs):
      raise RuntimeError('service gone')
    monkeypatch.setattr(run, 'log', broken)
    with caplog.at_level('WARNING'):
      for step in (1, 2, 3):
        writer.write(step, {'train_loss': float(step)})
    writer.close()
  finally:
    run.finish()
  said = [r.getMessage() for r in caplog.records if 'wandb.log failed' in r.getMessage()]
  assert len(said) == 1 and 'service gone' in said[0], said
  assert writer.wandb_run is None
  assert [r['step'] for r in tracking.read_metrics(workdir)] == [1, 2, 3]


def _exit_records(workdir: pathlib.Path) -> list:
  return [r.exit for r in wandb_records(_written_run_file(workdir))
          if r.WhichOneof('record_type') == 'exit']


def test_a_failed_or_preempted_run_is_not_finished_with_exit_code_0(tmp_path, monkeypatch):
  """wandb had recorded every run as "Finished" (exit code 0), a crashed one too (a review): the
  writer finishes the wandb run with the code it is given, and a training run stopped by SIGTERM
  at step 2 (saved, to be resumed) gives its exit status, 75."""
  config = default.get_config()
  config.wandb.mode = 'offline'
  env = _env(tmp_path, None)
  monkeypatch.delenv('WANDB_MODE', raising=False)
  for key in ('WANDB_CONFIG_DIR', 'WANDB_CACHE_DIR', 'WANDB_DATA_DIR'):
    monkeypatch.setenv(key, env[key])
  (tmp_path / 'crashed').mkdir()
  writer = tracking.MetricsWriter(tmp_path / 'crashed', config, resume_step=0)
  writer.write(1, {'train_loss': 1.0})
  writer.close(1)
  assert [r.exit_code for r in _exit_records(tmp_path / 'crashed')] == [1]
  env['JAX_CIFAR_TEST_SIGNAL'] = 'train_step:2:SIGTERM'
  out = train(tmp_path / 'stopped', '--config.wandb.mode=offline', env=env)
  assert out.returncode == 75, out.stderr[-3000:]
  assert [r.exit_code for r in _exit_records(tmp_path / 'stopped')] == [75]


def test_the_exit_code_wandb_is_given_is_the_training_runs_own(tmp_path, monkeypatch):
  """A finished run trained inside a caller's `except` block (a notebook cell handling its own
  error) is exit 0, not that caller's exception; a bug in the loop is 1 (a review of reading
  sys.exc_info())."""
  from _tiny_run import config as tiny  # pylint: disable=import-outside-toplevel
  from jax_cifar.training import trainer  # pylint: disable=import-outside-toplevel
  codes, close = [], tracking.MetricsWriter.close
  monkeypatch.setattr(tracking.MetricsWriter, 'close', lambda self, exit_code=0, preempted=False: (
      codes.append((exit_code, preempted)), close(self, exit_code, preempted)))
  try:
    raise ValueError('the caller handles this')
  except ValueError:
    trainer.train_and_evaluate(tiny(), str(tmp_path / 'ok'))

  def bug(event, index):
    if event == 'train_step':
      raise RuntimeError(f'a bug at step {index}')

  monkeypatch.setattr(trainer.interrupt, 'at_event', bug)
  with pytest.raises(RuntimeError, match='a bug at step 1'):
    trainer.train_and_evaluate(tiny(), str(tmp_path / 'bug'))
  assert codes == [(0, False), (1, False)]


class _Stderr:
  """`stream`, as a terminal (`terminal`) or as a file."""

  def __init__(self, stream, terminal: bool):
    self._stream, self._terminal = stream, terminal

  def isatty(self) -> bool:
    return self._terminal

  def __getattr__(self, name):
    return getattr(self._stream, name)


def test_a_bar_removed_when_done_is_not_drawn_under_another_in_a_log(monkeypatch):
  """In a log file (stderr not a terminal) a bar under another one gained a line and a cursor-up
  escape each second; alone it is redrawn every 30 s, and on a terminal each second."""
  monkeypatch.setattr(sys, 'stderr', _Stderr(sys.stderr, terminal=False))  # (Also under `pytest -s` at a terminal.)
  assert tracking.transient_bar(False) == {'disable': False, 'mininterval': 30.0}
  assert tracking.transient_bar(True) == {'disable': True, 'mininterval': 1.0}
  with tqdm.tqdm(total=3, disable=True):  # A disabled outer bar is no bar.
    assert tracking.transient_bar(False)['disable'] is False
  with tqdm.tqdm(total=3, file=sys.stderr):
    assert tracking.transient_bar(False) == {'disable': True, 'mininterval': 30.0}
    monkeypatch.setattr(sys, 'stderr', _Stderr(sys.stderr, terminal=True))
    assert tracking.transient_bar(False) == {'disable': False, 'mininterval': 1.0}
