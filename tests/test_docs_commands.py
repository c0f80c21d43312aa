"""Every command in the README's and docs' shell blocks names real things (issue 14 B2, the
static part): main.py's config files, flags and --config.<key> overrides, analysis tools
and their options, and no module outside requirements.txt."""

import glob
import os
import re
import shlex

import pytest

from ordered_jax import keys
from tests.conftest import ROOT

FILES = [os.path.join(ROOT, 'README.md')] + sorted(glob.glob(os.path.join(ROOT, 'docs', '*.md')))


def _commands():
  out = []
  for path in FILES:
    text = open(path).read()
    for block in re.findall(r'```bash\n(.*?)```', text, re.S):
      for cmd in block.replace('\\\n', ' ').splitlines():
        cmd = cmd.split(' # ')[0].strip()
        for part in cmd.split('&&'):
          if part.strip().startswith('python'):
            out.append((os.path.relpath(path, ROOT), part.strip()))
  return out


COMMANDS = _commands()


def test_there_are_commands():
  assert len(COMMANDS) > 20


@pytest.mark.parametrize('where,cmd', COMMANDS, ids=[f'{w}:{c[:60]}' for w, c in COMMANDS])
def test_command_names_real_things(where, cmd):
  import main  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv = [a for a in shlex.split(cmd) if a != '&']  # a background job in a block
  assert 'pandas' not in cmd, f'{where}: pandas is not in requirements.txt'
  if argv[1] == 'main.py':
    del main
    known = set(flags.FLAGS)
    config = None
    for a in argv[2:]:
      name = a.lstrip('-').split('=', 1)[0]
      if name.startswith('config.'):
        path = name[len('config.'):]
        if config is not None and not path.startswith('sweep.'):
          assert path in keys.paths(config), f'{where}: {cmd}: unknown key {path}'
      elif name == 'config':
        file = a.split('=', 1)[1]
        assert os.path.isfile(os.path.join(ROOT, file)), f'{where}: {file}'
        config = keys.load_config_file(os.path.join(ROOT, file))
        assert config is not None, file
      else:
        assert name in known or name.removeprefix('no') in known, f'{where}: --{name}'
  elif argv[1:3] == ['-m', 'analysis']:
    from analysis import __main__ as cli  # pylint: disable=g-import-not-at-top
    parser = cli.build_parser()
    args, unknown = parser.parse_known_args(argv[3:])
    assert not unknown, f'{where}: {cmd}: unknown options {unknown}'
    del args
  elif argv[1] == '-m':
    assert argv[2] in ('pytest', 'pip', 'probes.catalog'), cmd
