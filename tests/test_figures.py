"""The evaluation figures: the CIFAR-100-C heatmap and table with both means, the per-severity
row, and the confusion matrix (row-normalised, grouped by superclass)."""

import warnings

import numpy as np
import pytest

from conftest import is_png
from jax_cifar.data import ood
from jax_cifar.evaluation import figures


def _corruption_table(names, seed=0):
  rng = np.random.default_rng(seed)
  return {n: [float(x) for x in rng.uniform(0.05, 0.95, ood.SEVERITIES)] for n in names}


def test_corruption_heatmap_and_text_name_both_means(tmp_path, drawn):
  table = _corruption_table(ood.CORRUPTIONS)  # The 15 standard ones and the 4 extras.
  standard = np.mean([table[n] for n in ood.STANDARD_CORRUPTIONS])
  everything = np.mean(list(table.values()))
  assert abs(standard - everything) > 1e-3  # The two means are told apart below.
  means = figures.plot_corruption_heatmap(table, tmp_path / 'c.png', run_name='runs/r50')
  assert is_png(tmp_path / 'c.png')
  np.testing.assert_allclose([means['standard'], means['all']], [standard, everything], rtol=1e-12)
  ax = drawn[0].axes[0]
  assert ax.images[0].get_clim() == (0, 100)  # Fixed scale, whatever the data's range.
  title = ax.get_title()
  assert 'runs/r50' in title and '(%)' in title
  assert f'standard mean (15 corruptions): {100 * standard:.2f}%' in title
  assert f'all-corruption mean (19 corruptions): {100 * everything:.2f}%' in title
  assert drawn[0].axes[1].get_ylabel() == 'top-1 accuracy (%)'  # The colour bar.
  assert ax.texts[0].get_text() == f'{100 * table["gaussian_noise"][0]:.1f}'  # Cells in percent.

  text = figures.corruption_table_text(table, 'runs/r50')
  assert f'standard mean (15 corruptions): {100 * standard:.2f}%' in text
  assert f'all-corruption mean (19 corruptions): {100 * everything:.2f}%' in text
  fog = next(l for l in text.splitlines() if l.startswith('fog '))
  np.testing.assert_allclose([float(x) for x in fog.split()[1:]],
                             100 * np.r_[table['fog'], np.mean(table['fog'])], atol=0.006)
  assert any(l.startswith('spatter *') for l in text.splitlines())  # An extra is marked.


def test_the_standard_mean_needs_all_15(tmp_path):
  table = _corruption_table(ood.STANDARD_CORRUPTIONS[:3])
  text = figures.corruption_table_text(table)
  assert 'standard mean (15 corruptions): n/a (only 3 of the 15' in text
  assert f'all-corruption mean (3 corruptions): {100 * np.mean(list(table.values())):.2f}%' in text
  assert figures.plot_corruption_heatmap(table, tmp_path / 'c.png', 'r')['standard'] is None


def test_files_of_unknown_corruption_say_so_instead_of_none_of_15_present(tmp_path, drawn):
  """A DS542 set (distortionXX files, no corrupt_manifest.json naming their corruptions) had read
  "only 0 of the 15 standard corruptions present" with all 19 there (a review)."""
  table = _corruption_table([f'distortion{i:02d}' for i in range(19)])
  for text in (figures.corruption_table_text(table),
               (figures.plot_corruption_heatmap(table, tmp_path / 'c.png', 'r'),
                drawn[0].axes[0].get_title())[1]):
    assert ('standard mean (15 corruptions): n/a (the corruptions of 19 distortionXX files are '
            'not known)') in text
    assert 'only 0' not in text and '*' not in text


def test_confusion_figure(tmp_path):
  rng = np.random.default_rng(0)
  cm = rng.integers(0, 5, (100, 100)) + np.eye(100, dtype=int) * 40
  figures.plot_confusion(cm, tmp_path / 'cm.png', 'test', np.arange(100) % 20,
                        [f'super{i}' for i in range(20)])
  assert is_png(tmp_path / 'cm.png')


@pytest.mark.parametrize('name', ['runs/r $^$ x', 'runs/r$\\q$', 'runs/rv_$x^2$'])
def test_a_dollar_in_a_run_name_is_a_dollar_not_mathtext(tmp_path, drawn, name):
  """`r $^$ x` had stopped evaluate with a mathtext traceback after all its inference, and
  `$x^2$` had been drawn as "x²" (a path review)."""
  cm = np.eye(100, dtype=int) * 3
  figures.plot_confusion(cm, tmp_path / 'cm.png', f'{name} (best, step 4)')
  assert is_png(tmp_path / 'cm.png')
  title = drawn[0].axes[0].title
  assert title.get_text() == f'{name} (best, step 4)' and not title.get_parse_math()


def test_a_log_axis_keeps_its_mathtext_ticks(tmp_path):
  """Plain text is for the figure's own strings: a log axis writes its tick labels in mathtext
  ($\\mathdefault{10^{6}}$), which had been printed raw (the diff review)."""
  fig = figures.new_figure()
  ax = fig.add_subplot()
  ax.plot([1, 2, 3], [1e-3, 1.0, 1e6], label='run $a$')
  ax.set_yscale('log')
  ax.legend()
  figures.save(fig, tmp_path / 'log.png')
  ticks = [t for t in ax.get_yticklabels() if t.get_text()]
  assert ticks and all('$' in t.get_text() and t.get_parse_math() for t in ticks), [
      (t.get_text(), t.get_parse_math()) for t in ticks]
  assert not ax.get_legend().get_texts()[0].get_parse_math()


def test_characters_missing_from_the_font_are_named_in_one_warning(tmp_path):
  fig = figures.new_figure()
  ax = fig.add_subplot()
  ax.plot([0, 1], label='运行 一')
  ax.legend()
  ax.set_title('中文')
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    figures.save(fig, tmp_path / 'f.png')
  messages = [str(w.message) for w in caught]
  assert is_png(tmp_path / 'f.png')
  assert messages == [f"f.png: the figure's font has no glyph for "
                      f"{''.join(sorted('运行一中文'))!r}; they are drawn as boxes"], messages


def test_other_warnings_while_saving_are_passed_on(tmp_path):
  fig = figures.new_figure()
  ax = fig.add_subplot()
  ax.plot([0, 1])
  fig.savefig = lambda *a, **k: (warnings.warn('from savefig', RuntimeWarning),
                                 open(a[0], 'wb').write(b'x'))
  with pytest.warns(RuntimeWarning, match='from savefig'):
    figures.save(fig, tmp_path / 'f.png')


def test_the_confusion_matrix_is_row_normalised_and_grouped_on_both_axes(tmp_path, drawn):
  """Each drawn row is a true class's fractions; rows and columns are ordered by superclass,
  then by class index, so the diagonal stays the correct predictions."""
  rng = np.random.default_rng(0)
  cm = rng.integers(0, 5, (100, 100)) + np.eye(100, dtype=int) * 40
  groups = np.arange(100) % 20
  figures.plot_confusion(cm, tmp_path / 'cm.png', 'test', groups, [f's{i}' for i in range(20)])
  shown = np.asarray(drawn[-1].axes[0].images[0].get_array())
  order = np.array([c for g in range(20) for c in range(100) if groups[c] == g])
  expected = (cm / cm.sum(axis=1, keepdims=True))[np.ix_(order, order)]
  np.testing.assert_allclose(shown, expected, rtol=1e-6)
  ax = drawn[-1].axes[0]  # Both axes say so (the x axis, unticked, had not: a figure review).
  assert ax.get_ylabel() == 'true class (grouped by superclass)'
  assert ax.get_xlabel() == 'predicted class (same order: superclasses as on the left)'


def test_the_per_severity_means_and_their_row_are_over_the_corruptions(tmp_path, drawn):
  """corruption_means' per_severity (evaluate's cifar100c_per_severity) is each severity's mean
  over the corruptions; the table prints it as its 'mean (all)' row, and the heatmap's columns
  are labelled with severities 1 to 5 (a mutation audit: neither was checked)."""
  table = _corruption_table(ood.CORRUPTIONS[:4], seed=3)
  expected = np.mean([table[n] for n in table], axis=0)
  means = figures.corruption_means(table)
  np.testing.assert_allclose(means['per_severity'], expected, rtol=1e-12)
  assert len(means['per_severity']) == ood.SEVERITIES
  row = next(l for l in figures.corruption_table_text(table).splitlines()
             if l.startswith('mean (all)'))
  np.testing.assert_allclose([float(x) for x in row.split()[2:]],
                             100 * np.r_[expected, np.mean(expected)], atol=0.006)
  figures.plot_corruption_heatmap(table, tmp_path / 'c.png', 'r')
  assert [t.get_text() for t in drawn[-1].axes[0].get_xticklabels()] == ['1', '2', '3', '4', '5']
