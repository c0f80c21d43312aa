"""Default runs' outputs are bit-identical to the recorded ones (tests/golden.py).

Every JSONL row (floats compared exactly), the summaries' metrics, a hash of the final
weights and a sweep's run ids, for every ordering, resonant and a run with probes. The
floats depend on the JAX version and the CPU: in another environment (CI's machine) the
floats are compared to a relative 1e-3 instead (measured between an Intel Xeon with
AVX-512 and an AMD EPYC: at most 2.4e-5) and the weights' hash is left out, so the test
still guards every run; the run ids are always exact. A change meant to change trajectories regenerates the
files with ``python tests/make_golden.py`` in a commit that says so.
"""

import json

import pytest

from tests import golden


def _recorded(name):
  with open(golden.path(name)) as f:
    return json.load(f)


OTHER_CPU_RTOL, OTHER_CPU_ATOL = 1e-3, 1e-5
EXACT_ONLY = ('params_sha256',)  # bit-level: meaningful in the recorded environment only


def _first_difference(want, got, where='', tol=None):
  """The first place where ``got`` differs from ``want``; ``tol`` = (rtol, atol) compares
  floats approximately and skips the EXACT_ONLY keys."""
  if isinstance(want, dict) and isinstance(got, dict):
    for k in sorted(set(want) | set(got)):
      if k not in want or k not in got:
        return f'{where}/{k}: only in {"recorded" if k in want else "new"} output'
      if tol and k in EXACT_ONLY:
        continue
      d = _first_difference(want[k], got[k], f'{where}/{k}', tol)
      if d:
        return d
    return None
  if isinstance(want, list) and isinstance(got, list):
    if len(want) != len(got):
      return f'{where}: {len(want)} recorded items, {len(got)} now'
    for i, (a, b) in enumerate(zip(want, got)):
      d = _first_difference(a, b, f'{where}[{i}]', tol)
      if d:
        return d
    return None
  same = (want == got and type(want) is type(got)) or (want != want and got != got)  # NaN
  if tol and not same and type(want) is float and type(got) is float:
    same = abs(want - got) <= tol[1] + tol[0] * abs(want)
  return None if same else f'{where}: recorded {want!r}, now {got!r}'


@pytest.mark.parametrize('name', list(golden.cases()))
def test_outputs_are_bit_identical(name, tmp_path):
  rec = _recorded(name)
  same_env = rec['environment'] == golden.environment()
  tol = None if same_env else (OTHER_CPU_RTOL, OTHER_CPU_ATOL)
  diff = _first_difference(rec['outputs'], golden.outputs(name, str(tmp_path)), tol=tol)
  where = '' if same_env else (f' (recorded on {rec["environment"]["cpu"]}, compared to '
                               f'rtol {OTHER_CPU_RTOL}, atol {OTHER_CPU_ATOL} here)')
  assert diff is None, diff + where


def test_sweep_run_ids_are_unchanged():
  diff = _first_difference(_recorded('sweep_ids')['outputs'], golden.sweep_ids())
  assert diff is None, diff


def test_the_comparison_can_fail():
  assert _first_difference({'a': [1.0, 2.0]}, {'a': [1.0, 2.0000000000000004]})
  assert _first_difference({'a': 1}, {'a': 1.0})
  assert _first_difference({'a': 1}, {'a': 1, 'b': 2})
  tol = (OTHER_CPU_RTOL, OTHER_CPU_ATOL)
  assert not _first_difference({'a': [1.0], 'params_sha256': 'x'},
                               {'a': [1.0005], 'params_sha256': 'y'}, tol=tol)
  assert _first_difference({'a': [1.0]}, {'a': [1.002]}, tol=tol)
  assert _first_difference({'a': 1}, {'a': 2}, tol=tol)
  assert _first_difference(float('nan'), float('nan')) is None
