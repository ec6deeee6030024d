"""Which batch fits a memory cap, and the train.grad_accum_steps a recipe's batch then needs.

Pure search logic (no JAX): `measure(batch, accum, remat)` compiles (or runs) the real train step
and says whether it fits; scripts/benchmark.py --find_batch_size supplies it.
"""

from __future__ import annotations

from typing import Callable

# measure(batch, grad_accum_steps, remat) -> {'fits': bool, 'program_bytes': int | None, ...}
Measure = Callable[[int, int, bool], dict]


def largest_fitting(fits: Callable[[int], bool], start: int, hi: int,
                    quantum: int) -> tuple[int, int | None]:
  """(largest batch <= hi that fits or 0, smallest tried that does not or None), assuming memory
  grows with the batch: doubles from `start` (halves if it does not fit), then bisects."""
  start = max(1, min(start, hi))
  good, bad = 0, None
  if fits(start):
    good = start
    while good < hi:
      b = min(good * 2, hi)
      if not fits(b):
        bad = b
        break
      good = b
  else:
    bad = start
    while bad > 1:
      b = bad // 2
      if fits(b):
        good = b
        break
      bad = b
  while good and bad:  # Bisect, no coarser than `quantum` nor than `good` itself.
    q = max(1, min(quantum, good))
    mid = (good + bad) // 2 // q * q
    if mid <= good or bad - good <= q:
      break
    good, bad = (mid, bad) if fits(mid) else (good, mid)
  return good, bad


def accumulation_candidates(batch: int, largest_micro: int) -> list[int]:
  """The N dividing `batch` with batch / N <= largest_micro, smallest first."""
  return [n for n in range(1, batch + 1) if batch % n == 0 and batch // n <= largest_micro]


def plan(measure: Measure, recipe_batch: int, *, remat: bool, start: int, hi: int,
         quantum: int) -> dict:
  """Largest micro-batch, then the smallest grad_accum_steps whose compiled step (with the
  accumulation scan: one micro-batch of activations plus the gradient sum) fits as well."""
  tried: dict[tuple[int, int], dict] = {}

  def run(batch: int, accum: int) -> dict:
    if (batch, accum) not in tried:
      tried[batch, accum] = measure(batch, accum, remat)
    return tried[batch, accum]

  largest, bad = largest_fitting(lambda b: run(b, 1)['fits'], start, hi, quantum)
  out = {'remat': remat, 'largest_micro_batch': largest or None, 'hit_limit': bad is None,
         'recipe_batch': recipe_batch, 'grad_accum_steps': None, 'micro_batch': None,
         'accum_program_bytes': None, 'accum_fits': False}
  for n in accumulation_candidates(recipe_batch, largest):
    r = run(recipe_batch, n)
    out.update(grad_accum_steps=n, micro_batch=recipe_batch // n,
               accum_program_bytes=r.get('program_bytes'), accum_fits=r['fits'])
    if r['fits']:
      break
  out['tried'] = [{'batch': b, 'grad_accum_steps': n, **r} for (b, n), r in tried.items()]
  return out


def _gib(v) -> str:
  return '-' if v is None else f'{v / 2**30:.2f}'


def table(results: list[dict]) -> str:
  """One line per (model, dtype, size, remat): the answer to 'what fits in the cap'."""
  head = (f'{"model":<20} {"dtype":<8} {"px":>4} {"remat":<5} {"largest micro":>13} '
          f'{"batch":>5} {"accum N":>7} {"micro":>5} {"step GiB":>8} {"cap GiB":>7} {"fits":<4}')
  lines = [head, '-' * len(head)]
  for r in results:
    for p in r['plans']:
      limit = '+' if p['hit_limit'] and p['largest_micro_batch'] else ''
      lines.append(
          f'{r["model"]:<20} {r["dtype"]:<8} {r["image_size"]:>4} {"on" if p["remat"] else "off":<5} '
          f'{str(p["largest_micro_batch"] or "-") + limit:>13} {p["recipe_batch"]:>5} '
          f'{p["grad_accum_steps"] or "-":>7} {p["micro_batch"] or "-":>5} '
          f'{_gib(p["accum_program_bytes"]):>8} {_gib(r.get("cap_bytes")):>7} '
          f'{"yes" if p["accum_fits"] else "no":<4}')
  return '\n'.join(lines)


def summary(result: dict) -> str:
  """A --find_batch_size JSON's answer (`table`), or, for a search cut short before it had one,
  the compiles it finished (find_batch_size_tried): that table had been headers only (a review)."""
  if result.get('find_batch_size'):
    return table(result['find_batch_size'])
  lines = ['search cut short; the compiles it finished:']
  for t in result.get('find_batch_size_tried', []):
    lines.append(f"  {t['model']} {t['dtype']} {t['image_size']}px batch {t['batch']} accum "
                 f"{t['grad_accum_steps']} remat {'on' if t['remat'] else 'off'}: "
                 f"{_gib(t.get('program_bytes'))} GiB, {'fits' if t['fits'] else 'does not fit'}")
  return '\n'.join(lines if len(lines) > 1 else ['no compile finished'])

