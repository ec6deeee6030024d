"""scripts/profile_cache_load.py: the thunk count it reads from an optimised program, and a real
compile -> serialise -> load of a small trainer step (no timings asserted)."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'scripts'))
import profile_cache_load  # pylint: disable=g-import-not-at-top,wrong-import-position

_HLO = """HloModule jit_step, entry_computation_layout={(f32[8]{0})->f32[8]{0}}

%fused_computation (param_0: f32[8]) -> f32[8] {
  %param_0 = f32[8]{0} parameter(0)
  ROOT %multiply.1 = f32[8]{0} multiply(%param_0, %param_0)
}

ENTRY %main.9 (Arg_0.1: f32[8]) -> (f32[8], s32[]) {
  %Arg_0.1 = f32[8]{0} parameter(0)
  %constant.2 = s32[] constant(0)
  %multiply_fusion = f32[8]{0} fusion(%Arg_0.1), kind=kLoop, calls=%fused_computation
  %bitcast.3 = f32[2,4]{1,0} bitcast(%multiply_fusion)
  %copy.4 = f32[2,4]{0,1} copy(%bitcast.3)
  %call.5 = (s32[], u32[1]{0}, /*index=2*/u32[]) call(%constant.2), to_apply=%fused_computation
  %while.6 = (s32[], f32[8]{0}) while(%tuple.7), condition=%c, body=%b
  %get-tuple-element.8 = s32[] get-tuple-element(%call.5), index=0
  ROOT %tuple.9 = (f32[8]{0}, s32[]) tuple(%multiply_fusion, %get-tuple-element.8)
}
"""


def test_thunks_are_the_entry_operations_that_run_as_one():
  # Parameters, constants, bitcasts and tuple plumbing are no thunks; the fused computation's own
  # multiply is inside its fusion; a tuple shape with an /*index=N*/ comment still parses.
  assert profile_cache_load.thunk_counts(_HLO) == {'fusion': 1, 'copy': 1, 'call': 1, 'while': 1}


def test_small_trainer_step_is_compiled_serialised_and_loaded(tmp_path):
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'scripts' / 'profile_cache_load.py'),
       '--config', str(ROOT / 'configs' / 'smoke.py'), '--config.train.batch_size=8',
       '--config.model.width=4', '--loads', '1'],
      capture_output=True, text=True, env=env, timeout=300, check=False, cwd=tmp_path)
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.strip().splitlines()
  result = json.loads(lines[-1])
  assert lines[0].startswith('machine: ') and result['backend'] == 'cpu'
  assert len(result['load_s']) == 1 and result['load_s'][0] > 0 and result['bytes'] > 0
  # A ResNet-18 step: at least forward, input-gradient and kernel-gradient convolutions of its 20.
  assert result['thunk_kinds']['convolution'] >= 40 and result['thunks'] > 200


def test_importing_the_script_registers_no_flags_beside_the_cli_modules():
  """In one pytest worker with jax_cifar.evaluate imported, the script's --config had clashed
  (DuplicateFlagError at collection)."""
  import jax_cifar.evaluate  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  import importlib  # pylint: disable=import-outside-toplevel
  importlib.reload(profile_cache_load)


def test_no_loads_is_one_error_line_before_anything_compiles():
  """--loads 0 would compile for minutes, then print the median of no loads (a mutation audit)."""
  out = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'profile_cache_load.py'),
                        '--config', 'configs/smoke.py', '--loads', '0'], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
  assert out.returncode == 2 and out.stderr.strip() == (
      'error: flag --loads=0: 0 is not a positive integer (--helpshort lists the flags)')
