"""scripts/benchmark.py --find_batch_size (scripts/batch_fit.py): the largest micro-batch under a
memory cap, and the gradient accumulation (and rematerialisation) the recipe then needs."""

import json

import pytest

from conftest import load_script

benchmark = load_script('benchmark')
batch_fit = benchmark.batch_fit


def _memory_model(batch, accum, remat, *, fixed=100, per_example=10, accumulator=15):
  """Bytes of a synthetic step: fixed + one micro-batch of activations (+ the gradient sum)."""
  return fixed + per_example * (batch // accum) // (3 if remat else 1) + (accumulator if accum > 1 else 0)


@pytest.mark.parametrize('cap,start,hi', [(300, 4, 4096), (300, 64, 4096), (135, 1, 4096),
                                          (5000, 8, 100), (99, 4, 4096)])
def test_largest_fitting_finds_the_threshold_from_any_start(cap, start, hi):
  calls = []

  def fits(b):
    calls.append(b)
    return _memory_model(b, 1, False) <= cap

  good, bad = batch_fit.largest_fitting(fits, start, hi, quantum=1)
  truth = max([b for b in range(1, hi + 1) if _memory_model(b, 1, False) <= cap], default=0)
  assert good == truth
  assert bad is None if truth == hi else bad == truth + 1
  assert len(calls) <= 2 * hi.bit_length() + 2  # Doubling + bisection, not a linear scan.


def test_plan_takes_the_smallest_accumulation_whose_step_fits():
  measured = []

  def measure(batch, accum, remat):
    measured.append((batch, accum, remat))
    m = _memory_model(batch, accum, remat)
    return {'fits': m <= 400, 'program_bytes': m}

  p = batch_fit.plan(measure, 128, remat=False, start=32, hi=4096, quantum=1)
  largest = max(b for b in range(1, 4097) if _memory_model(b, 1, False) <= 400)
  assert p['largest_micro_batch'] == largest == 30 and not p['hit_limit']
  # 128/4 = 32 > 30 and 128/3 is no integer; micro-batch 16 (N=8) fits with the accumulator.
  assert (p['grad_accum_steps'], p['micro_batch'], p['accum_fits']) == (8, 16, True)
  assert p['accum_program_bytes'] == _memory_model(128, 8, False) <= 400
  assert (128, 8, False) in measured and (128, 4, False) not in measured
  assert {(t['batch'], t['grad_accum_steps']) for t in p['tried']} == {
      (b, n) for b, n, _ in measured}


def test_plan_moves_to_more_accumulation_when_the_accumulator_does_not_fit():
  def measure(batch, accum, remat):  # micro-batch 24 fits alone but not with the gradient sum.
    m = _memory_model(batch, accum, remat, accumulator=60)
    return {'fits': m <= 345, 'program_bytes': m}

  p = batch_fit.plan(measure, 48, remat=False, start=8, hi=4096, quantum=1)
  assert p['largest_micro_batch'] == 24
  assert (p['grad_accum_steps'], p['micro_batch'], p['accum_fits']) == (3, 16, True)
  none_fit = batch_fit.plan(lambda b, n, r: {'fits': b // n <= 4 and n == 1, 'program_bytes': None},
                            12, remat=False, start=2, hi=64, quantum=1)
  assert none_fit['largest_micro_batch'] == 4 and not none_fit['accum_fits']
  assert none_fit['grad_accum_steps'] == 12  # Every candidate (3, 4, 6, 12) tried, none fitted.


def test_find_batch_size_adds_a_remat_plan_when_accumulation_is_needed(monkeypatch):
  def fake_bench(config, steps, warmup, mem_cap=None, options=None, analysis_only=False):
    b, n = config.train.batch_size, config.train.grad_accum_steps
    m = _memory_model(b, n, config.model.remat)
    return {'program_bytes': m, 'over_cap': m > mem_cap, 'compile_s': 0.0}

  monkeypatch.setattr(benchmark, 'bench_jax', fake_bench)
  monkeypatch.setattr(benchmark, '_release', lambda: None)
  args = benchmark.parse_args(['--find_batch_size', '--analysis_only', '--mem_cap_gb',
                               str(400 / 2**30), '--batch_quantum', '1', '--recipe_batch', '128'])
  tried = []
  r = benchmark.find_batch_size('smoke', 'float32', 32, args, tried=tried.append)
  plain, remat = r['plans']
  assert (plain['remat'], plain['grad_accum_steps']) == (False, 8)
  # With a third of the activations, 90 examples fit: micro-batch 64 (N=2) with the accumulator.
  assert remat['remat'] and remat['largest_micro_batch'] == 90 and remat['grad_accum_steps'] == 2
  assert r['largest_batch'] == 30 and r['best_batch'] is None  # Nothing ran: no speeds.
  text = batch_fit.table([r])
  assert ' off ' in text and ' on ' in text
  assert batch_fit.summary({'find_batch_size': [r], 'find_batch_size_tried': tried}) == text
  # A search cut short (gpu_check.sh's time limit) has no answer yet: the compiles it finished.
  lines = batch_fit.summary({'find_batch_size': [], 'find_batch_size_tried': tried[:2]}).split('\n')
  assert lines[0] == 'search cut short; the compiles it finished:' and len(lines) == 3
  first = tried[0]
  assert lines[1] == (f"  smoke float32 32px batch {first['batch']} accum 1 remat off: "
                      f"{first['program_bytes'] / 2**30:.2f} GiB, "
                      f"{'fits' if first['fits'] else 'does not fit'}")
  assert batch_fit.summary({'find_batch_size': []}) == 'no compile finished'
  off = benchmark.parse_args(['--find_batch_size', '--analysis_only', '--mem_cap_gb',
                              str(400 / 2**30), '--recipe_batch', '16', '--remat', 'auto'])
  assert len(benchmark.find_batch_size('smoke', 'float32', 32, off)['plans']) == 1  # N = 1.


def test_find_batch_size_runs_steps_and_reports_the_fastest_batch(monkeypatch):
  limit = 200

  def fake_bench(config, steps, warmup, mem_cap=None, options=None, analysis_only=False):
    b = config.train.batch_size // config.train.grad_accum_steps
    if b > limit:
      raise RuntimeError('RESOURCE_EXHAUSTED: fake')
    return {'img_s': 1000.0 - abs(b - 64), 'program_bytes': None, 'over_cap': False}

  monkeypatch.setattr(benchmark, 'bench_jax', fake_bench)
  monkeypatch.setattr(benchmark, '_release', lambda: None)
  args = benchmark.parse_args(['--find_batch_size', '--find_start', '32', '--batch_quantum', '8',
                               '--recipe_batch', '512'])
  r = benchmark.find_batch_size('smoke', 'float32', 32, args)
  assert r['largest_batch'] == 200 and not r['hit_limit']
  assert r['best_batch'] == 64 and r['best_img_s'] == 1000.0
  tried = {t['batch']: t for t in r['plans'][0]['tried'] if t['grad_accum_steps'] == 1}
  assert not tried[256]['fits'] and tried[32]['img_s'] > 0
  assert r['plans'][0]['grad_accum_steps'] == 4  # 512 / 4 = 128 <= 200; 512 / 3 is no integer.


def test_analysis_only_search_needs_a_cap():
  with pytest.raises(SystemExit, match='needs --mem_cap_gb'):
    benchmark.main(['--find_batch_size', '--analysis_only'])


def test_analysis_only_plan_of_a_real_model_is_consistent_with_its_measurements(monkeypatch):
  """Compiles only: micro-batch and grad_accum_steps follow from XLA's numbers for a small CNN
  (at 64 px its activations outweigh its parameters, as a ResNet's do at 224 px)."""
  real, seen = benchmark.bench_jax, {}

  def memo_bench(config, *a, **k):  # Each (batch, accumulation) compiled once in this test.
    key = (config.train.batch_size, config.train.grad_accum_steps, config.model.remat)
    if key not in seen:
      seen[key] = real(config, *a, **k)
    return dict(seen[key])

  monkeypatch.setattr(benchmark, 'bench_jax', memo_bench)
  spec, size, recipe = 'simple_cnn', 64, 16
  m8 = memo_bench(benchmark.make_config(spec, 8, 'float32', size), 1, 0, None, None, True)
  cap = int(m8['program_bytes'] * 1.25)  # Room for 8 examples, not twice as many.
  args = benchmark.parse_args([
      '--find_batch_size', '--analysis_only', '--mem_cap_gb', str(cap / 2**30), '--find_start', '8',
      '--batch_quantum', '8', '--recipe_batch', str(recipe), '--remat', 'off'])
  r = benchmark.find_batch_size(spec, 'float32', size, args)
  (p,) = r['plans']
  tried = {(t['batch'], t['grad_accum_steps']): t for t in p['tried']}
  mem = lambda b, n: tried[b, n]['program_bytes']
  largest, n = p['largest_micro_batch'], p['grad_accum_steps']
  assert largest >= 8 and mem(largest, 1) <= cap
  smallest_over = min(b for (b, k), t in tried.items() if k == 1 and not t['fits'])
  assert mem(smallest_over, 1) > cap and smallest_over - largest <= 8
  assert recipe % n == 0 and recipe // n <= largest and p['micro_batch'] == recipe // n
  assert p['accum_fits'] and p['accum_program_bytes'] == mem(recipe, n) <= cap
  for k in batch_fit.accumulation_candidates(recipe, largest):
    if k < n:  # A smaller accumulation was measured and did not fit.
      assert mem(recipe, k) > cap
  # The accumulation scan holds one micro-batch of activations, not the whole batch's.
  assert mem(recipe, n) < mem(recipe, 1)
  assert all(t['memory_parts']['temp'] > 0 for t in p['tried'])
  assert 'XLA:CPU' in benchmark.memory_note('cpu', True)
  # XLA counts the accumulation loop's body once: an accumulating step's FLOPs (and so its
  # TFLOP/s and MFU) are left out, not reported 1/n as large (a review).
  for (_, accum, _), out in seen.items():
    assert (out['step_flops'] is None) == (accum > 1), (accum, out['step_flops'])
    if accum > 1:
      assert out['flops_source'].startswith('not counted')


def test_largest_fitting_keeps_to_the_batch_quantum():
  """--batch_quantum 8: the largest multiple of 8 that fits (16 under a cap that fits 20), not
  20."""
  fits = lambda b: _memory_model(b, 1, False) <= 300
  good, bad = batch_fit.largest_fitting(fits, 8, 4096, quantum=8)
  assert (good, bad) == (16, 24)


def test_find_batch_size_plans_no_remat_for_simple_cnn(monkeypatch):
  """simple_cnn has no residual blocks (model.remat is refused for it): no remat plan, even in
  need."""
  remats = []

  def fake_bench(config, steps, warmup, mem_cap=None, options=None, analysis_only=False):
    remats.append(config.model.remat)
    m = _memory_model(config.train.batch_size, config.train.grad_accum_steps, config.model.remat)
    return {'program_bytes': m, 'over_cap': m > mem_cap, 'compile_s': 0.0}

  monkeypatch.setattr(benchmark, 'bench_jax', fake_bench)
  monkeypatch.setattr(benchmark, '_release', lambda: None)
  args = benchmark.parse_args(['--find_batch_size', '--analysis_only', '--mem_cap_gb',
                               str(400 / 2**30), '--batch_quantum', '1', '--recipe_batch', '128',
                               '--remat', 'on'])
  r = benchmark.find_batch_size('simple_cnn', 'float32', 32, args)
  assert [p['remat'] for p in r['plans']] == [False] and r['plans'][0]['grad_accum_steps'] == 8
  assert not any(remats)


def test_each_compile_of_the_search_is_in_the_json_before_the_search_ends(monkeypatch, tmp_path):
  """The GPU part fit_r152 compiles ResNet-152 several times under one time limit: the JSON had
  been written only when the whole search ended, so a part cut short returned nothing (a review).
  Stopped at its third compile, the file holds the two before it."""
  calls = []

  def fake_bench(config, steps, warmup, mem_cap=None, options=None, analysis_only=False):
    calls.append(config.train.batch_size)
    if len(calls) == 3:
      raise KeyboardInterrupt  # The part's time limit.
    return {'program_bytes': 100 * config.train.batch_size, 'over_cap': False, 'compile_s': 1.0}

  monkeypatch.setattr(benchmark, 'bench_jax', fake_bench)
  monkeypatch.setattr(benchmark, '_release', lambda: None)
  out = tmp_path / 'fit.json'
  with pytest.raises(KeyboardInterrupt):
    benchmark.main(['--models', 'smoke', '--find_batch_size', '--analysis_only', '--mem_cap_gb',
                    '1', '--recipe_batch', '128', '--out', str(out)])
  tried = json.loads(out.read_text())['find_batch_size_tried']
  assert [(t['batch'], t['program_bytes'], t['fits']) for t in tried] == [
      (b, 100 * b, True) for b in calls[:2]]
