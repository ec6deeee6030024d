"""The benchmark's rows: repeats combined into one, and the printed table (scripts/benchmark.py)."""

import statistics


def combine_runs(runs: list[dict]) -> dict:
  """One row from repeats of the same measurement; a framework that failed in any repeat keeps
  that repeat's error."""
  row = dict(runs[-1])
  for fw in ('jax', 'torch'):
    results = [r[fw] for r in runs if fw in r]
    failed = [res for res in results if 'img_s' not in res]
    if failed:
      row[fw] = failed[0]
    elif results:
      speeds = [res['img_s'] for res in results]
      img_s = statistics.median(speeds)
      row[fw] = {**row[fw], 'img_s': img_s, 'img_s_runs': speeds,
                 'step_ms': 1e3 * row['batch'] / img_s}
      last = results[-1]
      for rate in ('tflop_s', 'mfu'):  # Per-second rates follow the median speed, not the last run's.
        if last.get(rate) is not None:
          row[fw][rate] = last[rate] * img_s / last['img_s']
      for key in ('first_step_s', 'first_step_note'):  # Only the first run starts the process.
        if key in results[0]:
          row[fw][key] = results[0][key]
        else:
          row[fw].pop(key, None)
  ratios = [r['jax_over_torch'] for r in runs if 'jax_over_torch' in r]
  row.pop('jax_over_torch', None)
  if ratios and len(ratios) == len(runs):
    row['jax_over_torch'], row['jax_over_torch_runs'] = statistics.median(ratios), ratios
  row['repeats'] = len(runs)
  return row


def _fmt(v, spec='.1f'):
  return '-' if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
  head = (f'{"model":<28} {"dtype":<8} {"px":>4} {"batch":>5} {"jax img/s":>10} {"torch img/s":>11} '
          f'{"jax/torch":>9} {"jax TFLOP/s":>11} {"MFU":>5} {"torch MFU":>9} {"jax compile s":>13} '
          f'{"torch":>6} {"torch compile s":>15} {"jax mem GiB":>11} {"torch mem GiB":>13}')
  lines = [head, '-' * len(head)]
  for r in rows:
    jx, pt = r.get('jax', {}), r.get('torch', {})
    peak, program = jx.get('peak_bytes'), jx.get('program_bytes')
    mem = _fmt(peak / 2**30, '.2f') if peak else f'{program / 2**30:.2f}*' if program else '-'
    accum = f' accum {r["grad_accum_steps"]}' if r.get('grad_accum_steps', 1) > 1 else ''
    # How PyTorch ran: torch.compile, eager, or eager after torch.compile failed or timed out.
    mode = ('-' if 'img_s' not in pt else 'eager*' if pt.get('compile_error') else
            'compile' if pt.get('compiled') else 'eager')
    lines.append(
        f'{r["model"] + (" (scan)" if r.get("scan_blocks") else "") + accum:<28} {r["dtype"]:<8} '
        f'{r["image_size"]:>4} {r["batch"]:>5} '
        f'{_fmt(jx.get("img_s")) if "error" not in jx else "error":>10} '
        f'{_fmt(pt.get("img_s")) if "error" not in pt else "error":>11} '
        f'{_fmt(r.get("jax_over_torch"), ".2f"):>9} {_fmt(jx.get("tflop_s"), ".3f"):>11} '
        f'{_fmt(jx.get("mfu") and 100 * jx["mfu"], ".1f"):>5} '
        f'{_fmt(pt.get("mfu") and 100 * pt["mfu"], ".1f"):>9} {_fmt(jx.get("compile_s")):>13} '
        f'{mode:>6} {_fmt(pt.get("compile_s")):>15} {mem:>11} '
        f'{_fmt(pt.get("peak_bytes") and pt["peak_bytes"] / 2**30, ".2f"):>13}')
    if pt.get('compile_error'):
      lines.append(f'    torch: {pt["compile_error"]}')
    if r.get('repeats', 1) > 1:  # The spread the medians above hide.
      span = lambda v, f='.1f': '-' if not v else f'{min(v):{f}}-{max(v):{f}}'  # pylint: disable=unnecessary-lambda-assignment
      lines.append(f'    {r["repeats"]} repeats: jax {span(jx.get("img_s_runs"))} img/s, torch '
                   f'{span(pt.get("img_s_runs"))} img/s, jax/torch '
                   f'{span(r.get("jax_over_torch_runs"), ".2f")}')
    for fw, res in (('jax', jx), ('torch', pt)):
      if 'error' in res:
        lines.append(f'    {fw} error: {res["error"]}')
  return '\n'.join(lines)


def memory_footnote(rows: list[dict]) -> str:
  """What a starred JAX memory figure is: XLA's analysis, not a measured peak."""
  if not any(r.get('jax', {}).get('program_bytes') and not r['jax'].get('peak_bytes')
             for r in rows):
    return ''
  return ('* jax mem: XLA\'s memory analysis of the compiled step, not a measured peak (the '
          'device reports none, as a CPU, or an earlier, larger row in this process had set it)')


def memory_note(backend: str, analysis_only: bool) -> str:
  """What the memory numbers are, so a CPU's are never read as a GPU's."""
  how = 'XLA memory analysis of the compiled step (temp + arguments + outputs - donated)'
  if backend == 'cpu':
    return (f'memory: {how} on XLA:CPU; a GPU\'s can differ (XLA:CPU upcasts bfloat16 to float32 '
            'in places and fuses differently). Run the same command on the GPU to measure it.')
  return f'memory: {how} on {backend}' + ('' if analysis_only else '; batches were also run')


def input_line(name: str, result: dict) -> str:
  """A line of gpu_check.sh's summary for scripts/profile_input.py's JSON (`name`: its part); its
  numbers had reached only gpu_check.log (a review)."""
  return (f"{name}: input only {result['input_only_img_s']:.0f} img/s, step only "
          f"{result['step_only_img_s']:.0f}, together {result['together_img_s']:.0f}: the step "
          f"waits for data {100 * result['wait_fraction']:.1f}% of the time ({result['steps']} "
          f"steps of {result['batch_size']}, {result['devices']} {result['backend']} device(s))")

