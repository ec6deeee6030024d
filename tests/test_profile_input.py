"""scripts/profile_input.py, whose img/s and waiting share docs/benchmarks.md and the README quote:
a real (tiny) run of its three timings on a clock that ticks once per reading, so the arithmetic
that turns times into those numbers is checked without timing anything."""

import json
import pathlib
import subprocess
import sys
import types

import pytest

from conftest import load_script

ROOT = pathlib.Path(__file__).resolve().parent.parent

profile_input = load_script('profile_input')


def test_profile_turns_its_timings_into_img_s_and_the_waiting_share(monkeypatch, capsys):
  from jax_cifar.configs import smoke  # pylint: disable=import-outside-toplevel
  config = smoke.get_config()
  config.data.source, config.data.synthetic_size = 'synthetic', 64
  config.data.train_limit, config.data.worker_count = 0, 0
  config.model.name, config.train.batch_size = 'simple_cnn', 8
  clock = [0.0]  # One tick per reading; each batch the pipeline hands over costs 10 more.

  def tick():
    clock[0] += 1
    return clock[0]

  real_batches = profile_input._batches  # pylint: disable=protected-access

  def slow_batches(*a):
    for batch in real_batches(*a):
      clock[0] += 10
      yield batch

  monkeypatch.setattr(profile_input, 'time', types.SimpleNamespace(perf_counter=tick))
  monkeypatch.setattr(profile_input, '_batches', slow_batches)
  r = profile_input.profile(config, 3)
  assert (r['steps'], r['batch_size'], r['devices'], r['backend']) == (3, 8, 1, 'cpu')
  # input only: 3 batches and a tick (31); step only: a tick (1); together: per step a tick,
  # a batch and a tick around next() (12, 11 of them in next()), and a tick at the end (37).
  assert r['input_only_img_s'] == pytest.approx(24 / 31) and r['step_only_img_s'] == 24
  assert r['together_img_s'] == pytest.approx(24 / 37)
  assert r['host_time_in_next_fraction'] == pytest.approx(33 / 37)
  assert r['wait_fraction'] == pytest.approx(1 - 1 / 37)
  assert r['host_ms_per_step_flat'] == 1e3 and r['host_ms_per_step_train_state'] == 1e3
  # Each number is printed as it is measured (a GPU part cut short had printed none: a review).
  assert capsys.readouterr().out.splitlines() == [
      '  host ms per step call (TrainState): 1000.0', '  host ms per step call (flat state): 1000.0',
      f'  input only img/s: {24 / 31:.1f}', '  step only img/s: 24.0']


def test_a_negative_step_count_is_one_error_line_and_help_is_status_0():
  """--steps -1 had run and printed a negative img/s, status 0; --help had been status 1 and -h a
  FATAL (a flag audit): the script now parses as the commands do."""
  script = str(ROOT / 'scripts' / 'profile_input.py')
  bad = subprocess.run([sys.executable, script, '--config', 'configs/smoke.py', '--steps', '-1'],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
  assert bad.returncode == 2 and bad.stderr.strip() == (
      'error: flag --steps=-1: -1 is not a non-negative integer (--helpshort lists the flags)')
  for flag in ('-h', '--help'):
    out = subprocess.run([sys.executable, script, flag], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=False)
    assert out.returncode == 0 and '--steps' in out.stdout + out.stderr, (flag, out.stderr[-1000:])


def test_its_json_is_written_whole_and_summarised_in_one_line(tmp_path):
  """gpu_check.sh gives --out and prints bench_table.input_line in its summary: the input-path
  numbers had reached only gpu_check.log (a review)."""
  result = {'steps': 200, 'batch_size': 128, 'devices': 1, 'backend': 'gpu',
            'input_only_img_s': 41234.4, 'step_only_img_s': 30001.0, 'together_img_s': 24000.0,
            'wait_fraction': 0.25}
  path = tmp_path / 'input_path.json'
  (tmp_path / 'input_path.json.tmp').write_text('{"partial": ')  # A write cut short before.
  profile_input.write_result(str(path), result)
  assert json.loads(path.read_text()) == result and not (tmp_path / 'input_path.json.tmp').exists()
  bench_table = load_script('bench_table')
  assert bench_table.input_line('input_path', result) == (
      'input_path: input only 41234 img/s, step only 30001, together 24000: the step waits for '
      'data 25.0% of the time (200 steps of 128, 1 gpu device(s))')
