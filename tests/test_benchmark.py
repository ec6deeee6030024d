"""scripts/benchmark.py: the JSON it writes, model specs, arguments, FLOPs and tables (no timings;
the batch-size search is in test_batch_fit.py, the PyTorch side in test_torch_step.py)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from conftest import load_script, require_module

ROOT = pathlib.Path(__file__).resolve().parent.parent
benchmark = load_script('benchmark')
batch_fit = benchmark.batch_fit


def test_tiny_run_writes_json_with_both_frameworks_and_ratio(tmp_path):
  require_module('torch')
  out = tmp_path / 'bench.json'
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'benchmark.py'), '--models', 'resnet18:cifar:4',
       '--batch', '8', '--steps', '2', '--warmup', '0', '--torch_compile', 'off', '--out', str(out)],
      capture_output=True, text=True, env=env, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(out.read_text())
  assert {'jax', 'backend', 'device', 'torch', 'machine'} <= set(result['environment'])
  if pathlib.Path('/proc/cpuinfo').exists():  # The instruction set is named (XLA:CPU depends on it).
    isa = result['environment']['machine']['isa']
    assert isa is not None and ('ISA ' + ' '.join(isa)) in proc.stdout.splitlines()[0]
  (row,) = result['rows']
  assert (row['arch'], row['stem'], row['width'], row['batch'], row['dtype'], row['image_size']) == (
      'resnet18', 'cifar', 4, 8, 'float32', 32)
  for fw in ('jax', 'torch'):
    assert {'img_s', 'step_ms', 'compile_s', 'loss', 'peak_bytes'} <= set(row[fw]), row[fw]
    assert row[fw]['img_s'] > 0
  assert row['jax']['program_bytes'] > 0
  assert row['jax_over_torch'] == pytest.approx(row['jax']['img_s'] / row['torch']['img_s'])
  assert 'jax/torch' in proc.stdout


def test_model_specs_name_configs_or_resnets_with_stem_and_width():
  from jax_cifar.configs import smoke as smoke_config  # pylint: disable=import-outside-toplevel
  smoke = benchmark.make_config('smoke', 64, 'bfloat16', 32)
  assert (smoke.model.name, smoke.model.width, smoke.model.dtype, smoke.train.batch_size) == (
      smoke_config.get_config().model.name, smoke_config.get_config().model.width, 'bfloat16', 64)
  r50 = benchmark.make_config('resnet50', 32, 'float32', 160)
  assert (r50.model.stem, r50.model.width, r50.model.normalize) == ('imagenet', 64, 'imagenet')
  assert (r50.optim.name, r50.optim.grad_clip_norm, r50.optim.label_smoothing) == ('adamw', 1.0, 0.1)
  r18 = benchmark.make_config('resnet18:cifar:16', 8, 'float32', 32)
  assert (r18.model.stem, r18.model.width) == ('cifar', 16)
  with pytest.raises(ValueError, match='unknown model spec'):
    benchmark.make_config('resnet19', 8, 'float32', 32)
  from_file = benchmark.recipe_config(str(ROOT / 'configs' / 'resnet152.py'), 32)
  from jax_cifar.configs import resnet152  # pylint: disable=import-outside-toplevel
  assert from_file.to_dict() == resnet152.get_config().to_dict()  # The file's recipe, unchanged.
  with pytest.raises(ValueError, match='no such config file'):
    benchmark.recipe_config('configs/no_such.py', 32)


@pytest.mark.parametrize('argv, message', [
    (['--frameworks', 'pytorch'], '--frameworks takes jax and/or torch'),
    (['--batch', '8,x'], '--batch takes a comma list of integers'),
    (['--batch', '0'], "--models smoke: config key 'train.batch_size' must be in"),
    (['--image_size', '8'], "config key 'model.image_size' must be in"),
    (['--grad_accum_steps', '0'], "config key 'train.grad_accum_steps' must be in"),
    (['--dtypes', 'float16'], "config key 'model.dtype' must be one of"),
    (['--models', 'smoke,nosuch'], "--models nosuch: unknown model spec 'nosuch'"),
    (['--find_batch_size', '--mem_cap_gb', '-1'], '--mem_cap_gb must be a positive number'),
    # Each had been taken (a flag audit): NaN let every batch fit, an empty list measured nothing.
    (['--find_batch_size', '--analysis_only', '--mem_cap_gb', 'nan'],
     '--mem_cap_gb must be a positive number of GiB (0 = no cap), got nan'),
    (['--models', ''], '--models is empty'), (['--batch', ' '], '--batch is empty'),
    (['--dtypes', ''], '--dtypes is empty'), (['--grad_accum_steps', ''], '--grad_accum_steps is empty'),
    (['--recipe_batch', '-5'], '--recipe_batch must be at least 1'),
    (['--batch_quantum', '0'], '--batch_quantum must be at least 1, got 0'),
    (['--cache_dir', __file__], 'is a file: give a folder for the compilation cache'),
    (['--find_batch_size', '--find_start', '64', '--find_max', '8'], '--find_start (64) must'),
    (['--compiler_options', 'notjson'], '--compiler_options takes a JSON object'),
    (['--torch_compile_timeout_s', '-5'], '--torch_compile_timeout_s must be 0'),
    # --find_batch_size chooses these itself; they had been dropped without a word (a review).
    (['--find_batch_size', '--batch', '64'], 'so --batch 64 would not be used'),
    (['--find_batch_size', '--grad_accum_steps', '2', '--repeat', '3'],
     'so --grad_accum_steps 2 and --repeat 3 would not be used'),
    (['--find_batch_size', '--frameworks', 'torch'], '--find_batch_size measures JAX only'),
    # They steer the search only; `--remat on` had measured without remat (a review).
    (['--remat', 'on'], '--remat on only steers --find_batch_size, so without it it would not be'),
    (['--mem_cap_gb', '16', '--recipe_batch', '128'],
     '--mem_cap_gb 16.0 and --recipe_batch 128 only steer --find_batch_size'),
    (['--find_start', '8', '--find_max', '64', '--batch_quantum', '8'],
     '--find_start 8 and --find_max 64 and --batch_quantum 8 only steer'),
])
def test_a_command_line_mistake_is_one_error_before_anything_is_measured(tmp_path, argv,
                                                                          message):
  """Each had measured first and then ended in a traceback, or ran and reported nonsense (a
  review: 0 img/s at batch 0, JAX in float16 against PyTorch in float32)."""
  with pytest.raises(SystemExit) as e:
    benchmark.main(['--models', 'smoke', '--steps', '1', '--warmup', '0', '--out',
                    str(tmp_path / 'b.json'), *argv])
  assert str(e.value).startswith('error: ') and message in str(e.value), str(e.value)
  assert '\n' not in str(e.value) and not (tmp_path / 'b.json').exists()
  with pytest.raises(SystemExit, match='is a folder; give a file name'):
    benchmark.main(['--models', 'smoke', '--out', str(tmp_path)])


def test_step_flops_prefer_the_lowered_program_and_mfu_needs_a_known_peak():
  """After compilation for a GPU, XLA's cost analysis skips the cuDNN convolutions (1/50 of the
  count on an H200), so the lowered program's count wins whenever it has one."""
  jax_step = load_script('jax_step')

  class Stage:
    def __init__(self, cost):
      self.cost = cost

    def cost_analysis(self):
      if isinstance(self.cost, Exception):
        raise self.cost
      return self.cost

  gpu_compiled = Stage([{'flops': 3.2e10}])  # jax may return a list of one dict
  assert jax_step.step_flops(Stage({'flops': 1.5e12}), gpu_compiled) == (1.5e12, 'lowered')
  assert jax_step.step_flops(Stage(None), gpu_compiled) == (3.2e10, 'compiled')
  assert jax_step.step_flops(Stage(RuntimeError('no cost model')), Stage({})) == (None, None)
  assert jax_step.peak_bf16_flops('NVIDIA H200') == 989e12
  assert jax_step.peak_bf16_flops('NVIDIA H100 80GB HBM3') == 989e12
  assert jax_step.peak_bf16_flops('NVIDIA H100 PCIe') is None
  assert jax_step.peak_bf16_flops('NVIDIA L40S') is None
  assert jax_step.peak_bf16_flops('cpu') is None
  # What jax reports for an A100 names it with its form factor, joined by hyphens.
  assert jax_step.peak_bf16_flops('NVIDIA A100-SXM4-80GB') == 312e12
  assert jax_step.peak_bf16_flops('NVIDIA A100-PCIE-40GB') is None  # any case of PCIe
  assert jax_step.peak_bf16_flops('NVIDIA H100 NVL') is None
  assert jax_step.peak_bf16_flops('NVIDIA GH100X') is None  # a name containing H100 is not one


def test_a_rows_peak_memory_is_its_own_or_unknown():
  jax_step = load_script('jax_step')
  assert jax_step.own_peak(None, 5 << 30) == 5 << 30  # the process's first row
  assert jax_step.own_peak(0, 5 << 30) == 5 << 30
  assert jax_step.own_peak(5 << 30, 7 << 30) == 7 << 30  # raised the peak: it is this row's
  assert jax_step.own_peak(7 << 30, 7 << 30) is None  # a smaller row after a larger one
  assert jax_step.own_peak(None, None) is None  # a CPU reports nothing


def test_mfu_divides_the_global_step_by_the_peak_of_every_device():
  jax_step = load_script('jax_step')
  one = jax_step.mfu(989e12 * 0.5, 1.0, 'NVIDIA H200', 1)
  assert one == pytest.approx(0.5)
  # Eight devices doing the same global step in the same time are each an eighth as busy.
  assert jax_step.mfu(989e12 * 0.5, 1.0, 'NVIDIA H200', 8) == pytest.approx(0.5 / 8)
  assert jax_step.mfu(1e12, 1.0, 'cpu', 1) is None


def test_lowered_step_flops_count_the_convolutions():
  """The lowered count is realistic: a training step is 2-3.5x the forward FLOPs (XLA counts 2.4x
  here: the first convolution needs no input gradient); torchvision's ResNet-18 forward is 1.82
  GMACs at 224 px, so 2 x 1.82 x (64/224)^2 GFLOPs at 64 px."""
  jax_step = load_script('jax_step')
  from jax_cifar.configs import default  # pylint: disable=import-outside-toplevel
  c = default.get_config()
  c.model.name, c.model.stem, c.model.image_size, c.train.batch_size = 'resnet18', 'imagenet', 64, 8
  _, _, _, info = jax_step.compile_jax(c, abstract=True)
  assert info['flops_source'] == 'lowered'
  forward = 2 * 1.82e9 * (64 / 224) ** 2
  assert 2 < info['step_flops'] / 8 / forward < 3.5, info['step_flops']


CPUINFO = """processor\t: 0
model name\t: Some CPU 9000
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 rdrand
processor\t: 1
model name\t: Some CPU 9000
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_bf16 rdrand
"""


def test_machine_names_the_cpu_and_its_instruction_set():
  hostinfo = benchmark.hostinfo
  info = hostinfo.machine(CPUINFO)
  assert (info['cpu'], info['isa']) == ('Some CPU 9000', ['avx2', 'avx512f', 'avx512_bf16'])
  line = hostinfo.describe(info)
  assert line.startswith('Some CPU 9000, ') and 'ISA avx2 avx512f avx512_bf16' in line
  avx2_only = hostinfo.machine(CPUINFO.replace(' avx512f avx512bw avx512_bf16', ''))
  assert avx2_only['isa'] == ['avx2'] and 'ISA avx2,' in hostinfo.describe(avx2_only) + ','
  none = hostinfo.machine('model name\t: Old\nflags\t\t: fpu sse2\n')
  assert 'ISA none of avx2/' in hostinfo.describe(none)
  assert 'ISA unknown' in hostinfo.describe(hostinfo.machine(''))  # not Linux: nothing to read


def _run(jax_img_s, torch_img_s):
  row = {'model': 'smoke', 'batch': 128, 'dtype': 'float32', 'image_size': 32,
         'jax': {'img_s': jax_img_s, 'compile_s': 6.0}, 'torch': {'img_s': torch_img_s}}
  row['jax_over_torch'] = jax_img_s / torch_img_s
  return row


def test_repeats_report_medians_their_range_and_any_error():
  runs = [_run(800, 1000), _run(700, 1400), _run(900, 1000)]
  row = benchmark.combine_runs(runs)
  assert row['repeats'] == 3
  assert (row['jax']['img_s'], row['torch']['img_s']) == (800, 1000)
  assert row['jax']['img_s_runs'] == [800, 700, 900]
  assert row['jax']['step_ms'] == pytest.approx(1e3 * 128 / 800)
  assert row['jax_over_torch'] == pytest.approx(0.8)  # the median of each repeat's own ratio
  assert row['jax_over_torch_runs'] == pytest.approx([0.8, 0.5, 0.9])
  lines = benchmark.table([row]).splitlines()
  assert '3 repeats: jax 700.0-900.0 img/s, torch 1000.0-1400.0 img/s, jax/torch 0.50-0.90' in lines[-1]
  failed = _run(850, 1000)
  failed['torch'] = {'error': 'RuntimeError: out of memory', 'oom': True}
  del failed['jax_over_torch']
  row = benchmark.combine_runs([_run(800, 1000), failed])
  assert row['torch'] == failed['torch'] and 'jax_over_torch' not in row
  assert row['jax']['img_s'] == pytest.approx(825)
  assert 'torch error: RuntimeError: out of memory' in benchmark.table([row])


def test_the_ratio_of_repeats_is_the_median_of_each_repeats_own_ratio():
  """JAX 800/700/900 against PyTorch 1400/1000/1200 img/s: each repeat's ratio 0.57, 0.70 and
  0.75, median 0.70; the ratio of the medians, 800 / 1200, would be 0.67 (a test audit: the runs
  above cannot tell the two apart)."""
  row = benchmark.combine_runs([_run(800, 1400), _run(700, 1000), _run(900, 1200)])
  assert row['jax_over_torch'] == pytest.approx(0.7)


def test_repeats_rescale_rates_to_the_median_and_keep_the_first_start_up_time():
  runs = [_run(800, 1000), _run(700, 1000), _run(900, 1000)]
  for r, tflops in zip(runs, (8.0, 7.0, 9.0)):  # proportional to img/s, as in a real run
    r['jax'].update(tflop_s=tflops, mfu=tflops / 100)
  runs[0]['jax']['first_step_s'] = 40.0  # only the first run in a process measures it
  row = benchmark.combine_runs(runs)
  assert row['jax']['img_s'] == 800
  assert row['jax']['tflop_s'] == pytest.approx(8.0) and row['jax']['mfu'] == pytest.approx(0.08)
  assert row['jax']['first_step_s'] == 40.0
  assert 'tflop_s' not in row['torch']


@pytest.mark.parametrize('flag', ['--repeat', '--steps'])
def test_repeat_and_steps_must_be_positive(flag):
  with pytest.raises(SystemExit, match=f'{flag} must be at least 1'):
    benchmark.main([flag, '0'])
  with pytest.raises(SystemExit, match='--warmup must be at least 0'):
    benchmark.main(['--warmup', '-1'])


def test_analysis_only_runs_no_pytorch(monkeypatch):
  called = []
  monkeypatch.setattr(benchmark, 'bench_torch', lambda *a, **k: called.append('torch') or {})
  monkeypatch.setattr(benchmark, 'bench_jax', lambda *a, **k: {'compile_s': 1.0, 'program_bytes': 8})
  args = benchmark.parse_args(['--analysis_only'])
  row = benchmark.run_one('smoke', 8, 'float32', 32, args)
  assert called == [] and 'torch' not in row and row['jax']['program_bytes'] == 8


def test_first_step_time_is_jax_alone_or_left_out(monkeypatch):
  """first_step_s (process start -> JAX's first step) had included PyTorch's whole run when
  PyTorch went first in the process (a review)."""
  monkeypatch.setattr(benchmark, 'bench_jax', lambda *a, **k: {'img_s': 10.0, 'first_step_s': 9.0})
  monkeypatch.setattr(benchmark, 'bench_torch', lambda *a, **k: {'img_s': 20.0})
  args = benchmark.parse_args([])
  monkeypatch.setattr(benchmark, '_TORCH_RAN', [])
  row = benchmark.run_one('smoke', 8, 'float32', 32, args, torch_first=False)
  assert row['jax']['first_step_s'] == 9.0 and 'first_step_note' not in row['jax']
  monkeypatch.setattr(benchmark, '_TORCH_RAN', [])
  row = benchmark.run_one('smoke', 8, 'float32', 32, args, torch_first=True)
  assert 'first_step_s' not in row['jax']
  assert row['jax']['first_step_note'] == 'not measured: PyTorch ran first in this process'
  # Repeats keep the first run's: here its note, not a later run's (absent) time.
  later = _run(800, 1000)
  assert benchmark.combine_runs([row, later])['jax']['first_step_note'] == row['jax'][
      'first_step_note']


def test_a_memory_figure_from_xla_analysis_is_starred_and_explained():
  """The JAX memory column falls back to XLA's program size when the device measured no peak of
  the row's own; it had been printed like a measurement (a review)."""
  measured = {**_run(800, 1000), 'scan_blocks': False}
  measured['jax'].update(peak_bytes=3 << 30, program_bytes=2 << 30)
  analysed = {**_run(800, 1000), 'scan_blocks': False}
  analysed['jax'].update(program_bytes=2 << 30)
  rows = benchmark.table([measured, analysed]).splitlines()[2:]
  assert ' 3.00 ' in rows[0] and '*' not in rows[0]
  assert ' 2.00* ' in rows[1]
  assert benchmark.memory_footnote([measured]) == ''
  assert benchmark.memory_footnote([measured, analysed]).startswith(
      "* jax mem: XLA's memory analysis of the compiled step, not a measured peak")


def test_table_row_puts_each_number_in_its_column_and_unit():
  """The printed table is what docs/benchmarks.md quotes: every column its own value, in %, GiB
  and the printed precision (a mutation audit: MFU as a fraction, the JAX compile time in the
  PyTorch column, torch memory in MiB and a missing repeats line all passed)."""
  row = {'model': 'resnet50', 'dtype': 'bfloat16', 'image_size': 160, 'batch': 256, 'repeats': 2,
         'jax': {'img_s': 1234.5, 'tflop_s': 12.3456, 'mfu': 0.4321, 'compile_s': 45.6,
                 'peak_bytes': 3 << 30, 'img_s_runs': [1200.0, 1269.0]},
         'torch': {'img_s': 1000.0, 'mfu': 0.35, 'compile_s': 78.9, 'peak_bytes': 5 << 30,
                   'compiled': True, 'img_s_runs': [990.0, 1010.0]},
         'jax_over_torch': 1.2345, 'jax_over_torch_runs': [1.2, 1.27]}
  lines = benchmark.table([row]).splitlines()
  assert lines[0].split() == ['model', 'dtype', 'px', 'batch', 'jax', 'img/s', 'torch', 'img/s',
                              'jax/torch', 'jax', 'TFLOP/s', 'MFU', 'torch', 'MFU', 'jax', 'compile',
                              's', 'torch', 'torch', 'compile', 's', 'jax', 'mem', 'GiB', 'torch',
                              'mem', 'GiB']
  assert lines[2].split() == ['resnet50', 'bfloat16', '160', '256', '1234.5', '1000.0', '1.23',
                              '12.346', '43.2', '35.0', '45.6', 'compile', '78.9', '3.00', '5.00']
  assert lines[3] == ('    2 repeats: jax 1200.0-1269.0 img/s, torch 990.0-1010.0 img/s, '
                      'jax/torch 1.20-1.27')
  assert len(lines) == 4
  eager = {**row, 'repeats': 1, 'torch': {'img_s': 10.0, 'compiled': False}}
  assert benchmark.table([eager]).splitlines()[2].split()[11] == 'eager'
  fell_back = {**eager, 'torch': {'img_s': 10.0, 'compiled': False, 'compile_error': 'boom'}}
  lines = benchmark.table([fell_back]).splitlines()
  assert lines[2].split()[11] == 'eager*' and lines[3] == '    torch: boom'
  jax_only = {**eager, 'torch': {}, 'grad_accum_steps': 4, 'scan_blocks': True}
  assert benchmark.table([jax_only]).splitlines()[2].startswith('resnet50 (scan) accum 4 ')


def test_a_repeat_that_failed_still_counts_as_a_repeat():
  failed = _run(850, 1000)
  failed['torch'] = {'error': 'RuntimeError: out of memory', 'oom': True}
  del failed['jax_over_torch']
  row = benchmark.combine_runs([_run(800, 1000), failed])
  assert row['repeats'] == 2 and row['jax']['img_s_runs'] == [800, 850]


def test_the_memory_note_says_which_backend_and_whether_batches_ran():
  cpu = benchmark.memory_note('cpu', analysis_only=False)
  assert 'on XLA:CPU' in cpu and 'Run the same command on the GPU' in cpu
  assert benchmark.memory_note('gpu', analysis_only=False).endswith(
      'on gpu; batches were also run')
  assert benchmark.memory_note('gpu', analysis_only=True).endswith('donated) on gpu')


@pytest.mark.parametrize('argv, message', [
    (['--batch', '8,0'], "--models smoke: config key 'train.batch_size' must be in"),
    (['--grad_accum_steps', '1,0'], "config key 'train.grad_accum_steps' must be in"),
    (['--frameworks', ''], '--frameworks takes jax and/or torch'),
])
def test_every_value_of_a_list_flag_is_checked_before_measuring(tmp_path, argv, message):
  """Only the first batch and accumulation had to be valid for the check to pass, and an empty
  --frameworks measured nothing (a mutation audit found neither tested)."""
  with pytest.raises(SystemExit) as e:
    benchmark.main(['--models', 'smoke', '--steps', '1', '--warmup', '0', *argv])
  assert str(e.value).startswith('error: ') and message in str(e.value), str(e.value)


def test_a_search_may_start_at_its_maximum():
  args = benchmark.parse_args(['--find_batch_size', '--find_start', '64', '--find_max', '64'])
  benchmark.bench_args.check(args, benchmark.make_config, benchmark.recipe_config, benchmark._csv,  # pylint: disable=protected-access
                             defaults=vars(benchmark.parse_args([])))


def test_machine_names_amx_and_the_one_minute_load():
  hostinfo = benchmark.hostinfo
  info = hostinfo.machine(CPUINFO.replace('rdrand', 'rdrand amx_bf16 amx_tile'))
  assert info['isa'] == ['avx2', 'avx512f', 'avx512_bf16', 'amx_bf16']
  line = hostinfo.describe({**info, 'load_average': [1.26, 0.5, 0.25]})
  assert line.endswith('ISA avx2 avx512f avx512_bf16 amx_bf16, load 1.3'), line


def test_jax_step_numbers_agree_with_each_other_and_every_timed_step_counts():
  """img/s, step ms, TFLOP/s and program bytes are one measurement in four units (no timing is
  asserted, only their arithmetic); --warmup 0 --steps 1 times the one step."""
  jax_step = sys.modules['jax_step']
  config = benchmark.make_config('resnet18:cifar:4', 8, 'float32', 32)
  out = jax_step.bench_jax(config, steps=1, warmup=0)
  assert out['img_s'] * out['step_ms'] == pytest.approx(1e3 * 8)
  assert out['flops_source'] == 'lowered' and out['step_flops'] > 0
  assert out['tflop_s'] == pytest.approx(out['step_flops'] / (out['step_ms'] / 1e3) / 1e12)
  assert 'mfu' not in out  # float32: MFU is against a bf16 peak
  parts = out['memory_parts']
  assert out['program_bytes'] == parts['temp'] + parts['argument'] + parts['output'] - parts['alias']
  assert parts['alias'] > 0  # The donated train state.


def test_jax_step_leaves_scanned_blocks_uncounted():
  """XLA counts a loop body once: a scanned model's FLOPs (so TFLOP/s and MFU) are left out."""
  jax_step = sys.modules['jax_step']
  config = benchmark.make_config('resnet18:cifar:4', 8, 'float32', 32, scan_blocks=True)
  _, _, _, info = jax_step.compile_jax(config, abstract=True)
  assert info['step_flops'] is None and info['flops_source'].startswith('not counted')


def test_a_cap_above_what_jax_may_use_on_the_device_is_said():
  """A "16 GB" card gives JAX 75% of its ~15 GiB unless XLA_PYTHON_CLIENT_MEM_FRACTION says
  otherwise: --mem_cap_gb 16 had found micro-batches that would not fit there (an audit)."""
  t4_pool = int(0.75 * 15 * 2**30)
  assert benchmark.cap_over_pool(16, t4_pool) == (
      '--mem_cap_gb 16 is more than JAX may use on this device (11.2 GiB: '
      'XLA_PYTHON_CLIENT_MEM_FRACTION of it, 0.75 unless set): a micro-batch found to fit under '
      'the cap may not fit here')
  assert benchmark.cap_over_pool(11, t4_pool) is None
  assert benchmark.cap_over_pool(16, None) is None and benchmark.cap_over_pool(0, t4_pool) is None
