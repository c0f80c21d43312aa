"""Default runs' outputs are bit-identical to the recorded ones (tests/golden.py).

Every JSONL row (floats compared exactly), the summaries' metrics, a hash of the final
weights and a sweep's run ids, for every ordering, resonant and a run with probes. The
floats depend on the JAX version and the CPU architecture: elsewhere the float cases
skip (the run ids never do). A change meant to change trajectories regenerates the
files with ``python tests/make_golden.py`` in a commit that says so.
"""

import json

import pytest

from tests import golden


def _recorded(name):
  with open(golden.path(name)) as f:
    return json.load(f)


def _first_difference(want, got, where=''):
  if isinstance(want, dict) and isinstance(got, dict):
    for k in sorted(set(want) | set(got)):
      if k not in want or k not in got:
        return f'{where}/{k}: only in {"recorded" if k in want else "new"} output'
      d = _first_difference(want[k], got[k], f'{where}/{k}')
      if d:
        return d
    return None
  if isinstance(want, list) and isinstance(got, list):
    if len(want) != len(got):
      return f'{where}: {len(want)} recorded items, {len(got)} now'
    for i, (a, b) in enumerate(zip(want, got)):
      d = _first_difference(a, b, f'{where}[{i}]')
      if d:
        return d
    return None
  same = (want == got and type(want) is type(got)) or (want != want and got != got)  # NaN
  return None if same else f'{where}: recorded {want!r}, now {got!r}'


@pytest.mark.parametrize('name', list(golden.cases()))
def test_outputs_are_bit_identical(name, tmp_path):
  rec = _recorded(name)
  if rec['environment'] != golden.environment():
    pytest.skip(f'recorded on {rec["environment"]}, this is {golden.environment()}')
  diff = _first_difference(rec['outputs'], golden.outputs(name, str(tmp_path)))
  assert diff is None, diff


def test_sweep_run_ids_are_unchanged():
  diff = _first_difference(_recorded('sweep_ids')['outputs'], golden.sweep_ids())
  assert diff is None, diff


def test_the_comparison_can_fail():
  assert _first_difference({'a': [1.0, 2.0]}, {'a': [1.0, 2.0000000000000004]})
  assert _first_difference({'a': 1}, {'a': 1.0})
  assert _first_difference({'a': 1}, {'a': 1, 'b': 2})
  assert _first_difference(float('nan'), float('nan')) is None
