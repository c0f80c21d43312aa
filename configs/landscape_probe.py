r"""One point of the landscape with probes (issue 18, part 4): p = 59, 60 % of the pairs, seed 0,
random against fixed-random (the point where seed 0's random never generalised while
fixed-random did), with the counterfactual split and the Fourier probes. docs/landscape.md.

  python main.py --config=configs/landscape_probe.py --workdir=output/landscape-probe --quiet
  python -m analysis report --workdir output/landscape-probe
"""

from configs import landscape


def get_config():
  config = landscape.get_config()
  for key in config.sweep.zip.keys():
    if isinstance(config.sweep.zip[key], str):
      config.sweep.zip[key] = ''
  config.sweep.grid.strategy = ''
  config.sweep.grid.seed = ''
  for key, value in landscape.point_fields(59, 0.6).items():
    config[key] = value
  config.strategy = 'random,fixed-random'
  config.seed = 0
  config.probes.names = 'counterfactual,fourier'
  config.probes.counterfactual.every_epoch_until = 10   # then every probe_every epochs
  return config
