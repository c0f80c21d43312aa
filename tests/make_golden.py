"""Write tests/data/golden/*.json: the recorded outputs ``tests/test_golden.py`` checks.

  python tests/make_golden.py            # every case
  python tests/make_golden.py probes     # one case

Regenerate only for a change meant to change trajectories, in a commit that says so.
"""

import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import golden  # noqa: E402  (conftest sets JAX up first)


def main(argv) -> None:
  names = argv[1:] or list(golden.cases()) + ['sweep_ids']
  os.makedirs(golden.GOLDEN_DIR, exist_ok=True)
  for name in names:
    if name == 'sweep_ids':
      data = golden.sweep_ids()
    else:
      with tempfile.TemporaryDirectory() as tmp:
        data = golden.outputs(name, tmp)
    with open(golden.path(name), 'w') as f:
      json.dump({'environment': golden.environment(), 'outputs': data}, f, indent=1,
                sort_keys=True)
      f.write('\n')
    print('wrote', golden.path(name))


if __name__ == '__main__':
  main(sys.argv)
