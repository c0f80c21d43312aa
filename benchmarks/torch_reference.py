"""CPU timing of the PyTorch reference (OrderedLearning mod_arithmetic) training loop.

An optional benchmark: it re-creates the reference GrokkingTransformer and its
epoch loop (randperm order, per-step `loss.item()`, AdamW, per-epoch cosine LR
step, test + train accuracy every epoch) so that the JAX port can be timed
against it on the same machine. PyTorch is not a project dependency; without it
the script says so and exits 0. Data pairs are random (uniform with
replacement), which does not matter for timing.

  pip install torch                                  # CPU wheel is enough
  python benchmarks/torch_reference.py --epochs 3    # the "tiny" preset sizes
  python benchmarks/torch_reference.py --embed-dim 256 --mlp-dim 2048  # reference model
  python benchmarks/torch_reference.py --threads 2 --json output/torch_ref.json

One untimed warm-up epoch runs first; then --epochs epochs are timed, with the
training loop and the evaluation on separate time.perf_counter() clocks.
"""

import argparse
import json
import math
import os
import platform
import sys
import time
import types

try:
  import torch
  from torch import nn
except ImportError:  # optional dependency: main() reports it and exits 0
  torch = None
  nn = types.SimpleNamespace(Module=object)

LR = 1e-3
MIN_LR = 5e-7
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.1
DROPOUT = 0.1
EVAL_BATCH_FACTOR = 8


class GrokkingTransformer(nn.Module):
  """Reference model: token + learned position embeddings, pre-LN encoder,
  mean over the 2 positions, untied linear decoder to p classes."""

  def __init__(self, p, embed_dim, num_heads, layers, mlp_dim):
    super().__init__()
    self.pos_embedding = nn.Parameter(torch.randn(2, embed_dim))
    self.embedding = nn.Embedding(p, embed_dim)
    layer = nn.TransformerEncoderLayer(
        embed_dim, num_heads, dim_feedforward=mlp_dim, dropout=DROPOUT,
        activation='relu', batch_first=True, norm_first=True)
    # norm_first disables nested tensors anyway; saying so silences a warning.
    self.transformer = nn.TransformerEncoder(
        layer, num_layers=layers, enable_nested_tensor=False)
    self.decoder = nn.Linear(embed_dim, p)

  def forward(self, x):
    """x: int64 [B, 2] (a, b) -> logits [B, p]."""
    h = self.embedding(x) + self.pos_embedding
    return self.decoder(self.transformer(h).mean(dim=1))


def parse_args(argv=None):
  """Command-line flags; defaults mirror configs/tiny.py."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--p', type=int, default=97)
  parser.add_argument('--train-size', type=int, default=3500)
  parser.add_argument('--test-size', type=int, default=4000)
  parser.add_argument('--batch-size', type=int, default=256)
  parser.add_argument('--embed-dim', type=int, default=128)
  parser.add_argument('--num-heads', type=int, default=4)
  parser.add_argument('--layers', type=int, default=2)
  parser.add_argument('--mlp-dim', type=int, default=512,
                      help='dim_feedforward (PyTorch default and reference: 2048)')
  parser.add_argument('--epochs', type=int, default=3,
                      help='timed epochs, after 1 untimed warm-up epoch')
  parser.add_argument('--seed', type=int, default=199)
  parser.add_argument('--threads', type=int, default=None,
                      help="torch.set_num_threads (default: torch's default)")
  parser.add_argument('--json', default=None, metavar='PATH',
                      help='also write the results dict as JSON')
  args = parser.parse_args(argv)
  if args.epochs < 1:
    parser.error('--epochs must be >= 1')
  return args


def setup_torch(seed, threads):
  """Seeding and determinism as in the reference; optional thread count."""
  if threads is not None:
    torch.set_num_threads(threads)
  torch.manual_seed(seed)
  torch.use_deterministic_algorithms(True)
  torch.set_float32_matmul_precision('highest')


def make_data(p, n, generator):
  """Random rows (a, b, (a + b) % p) as an int64 tensor [n, 3]."""
  ab = torch.randint(0, p, (n, 2), generator=generator, dtype=torch.int64)
  return torch.cat([ab, (ab.sum(dim=1, keepdim=True) % p)], dim=1)


def epoch_order(n, seed, epoch):
  """The reference 'random' strategy: randperm keyed by seed + epoch."""
  return torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))


def iterate_batches(data, order, batch_size):
  """Consecutive slices of batch_size rows, keeping the last partial batch."""
  for start in range(0, len(data), batch_size):
    idx = slice(start, start + batch_size)
    yield data[idx] if order is None else data[order[idx]]


def train_epoch(model, optimizer, criterion, data, order, batch_size):
  """One reference training epoch; returns the per-step losses."""
  model.train()
  losses = []
  for batch in iterate_batches(data, order, batch_size):
    optimizer.zero_grad()
    loss = criterion(model(batch[:, :2]), batch[:, 2])
    loss.backward()
    optimizer.step()
    losses.append(loss.item())  # the reference syncs on every step
  return losses


def accuracy(model, data, order, batch_size):
  """Percent argmax accuracy in eval mode, without gradients."""
  model.eval()
  correct = torch.zeros((), dtype=torch.int64)
  with torch.no_grad():
    for batch in iterate_batches(data, order, batch_size):
      correct += (model(batch[:, :2]).argmax(dim=-1) == batch[:, 2]).sum()
  return 100.0 * correct.item() / len(data)


def evaluate(model, train, test, order, batch_size):
  """Reference eval: test set in 8*B batches, train set via the epoch's loader."""
  return {
      'validation_accuracy': accuracy(
          model, test, None, EVAL_BATCH_FACTOR * batch_size),
      'training_accuracy': accuracy(model, train, order, batch_size),
  }


def run(args):
  """Warm-up epoch, then args.epochs timed epochs; returns the results dict."""
  setup_torch(args.seed, args.threads)
  model = GrokkingTransformer(
      args.p, args.embed_dim, args.num_heads, args.layers, args.mlp_dim)
  data_gen = torch.Generator().manual_seed(args.seed)
  train = make_data(args.p, args.train_size, data_gen)
  test = make_data(args.p, args.test_size, data_gen)
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS,
                                eps=EPS, weight_decay=WEIGHT_DECAY)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
      optimizer, T_max=args.epochs + 1, eta_min=MIN_LR)
  criterion = nn.CrossEntropyLoss()

  train_s = eval_s = 0.0
  for epoch in range(args.epochs + 1):  # epoch 0 is the untimed warm-up
    order = epoch_order(len(train), args.seed, epoch)
    t0 = time.perf_counter()
    losses = train_epoch(model, optimizer, criterion, train, order,
                         args.batch_size)
    t1 = time.perf_counter()
    scheduler.step()
    metrics = evaluate(model, train, test, order, args.batch_size)
    t2 = time.perf_counter()
    if epoch > 0:
      train_s += t1 - t0
      eval_s += t2 - t1

  steps = math.ceil(len(train) / args.batch_size)
  return {
      'config': vars(args),
      'torch_version': torch.__version__,
      'threads': torch.get_num_threads(),
      'interop_threads': torch.get_num_interop_threads(),
      'cpu_count': os.cpu_count(),
      'machine': platform.processor() or platform.machine(),
      'num_params': sum(t.numel() for t in model.parameters()),
      'steps_per_epoch': steps,
      'timed_epochs': args.epochs,
      'train_seconds': train_s,
      'eval_seconds': eval_s,
      'train_steps_per_s': steps * args.epochs / train_s,
      'train_epochs_per_s': args.epochs / train_s,
      'epochs_per_s': args.epochs / (train_s + eval_s),
      'seconds_per_epoch_with_eval': (train_s + eval_s) / args.epochs,
      'final_loss': sum(losses) / len(losses),
      **metrics,
  }


def report(results):
  """Print the results in a few human-readable lines."""
  cfg = results['config']
  print(f"torch {results['torch_version']}: {results['threads']} threads "
        f"({results['interop_threads']} inter-op), {results['cpu_count']} CPUs")
  print('config: ' + ' '.join(
      f'{k}={v}' for k, v in cfg.items() if k not in ('json',)))
  print(f"parameters: {results['num_params']:,}")
  print(f"timed {results['timed_epochs']} epochs x "
        f"{results['steps_per_epoch']} steps (after 1 warm-up epoch)")
  print(f"train steps/s (training only): {results['train_steps_per_s']:.1f}")
  print(f"epochs/s (train + eval):       {results['epochs_per_s']:.3f}")
  print(f"seconds/epoch with eval:       "
        f"{results['seconds_per_epoch_with_eval']:.3f} "
        f"(train {results['train_seconds'] / results['timed_epochs']:.3f}, "
        f"eval {results['eval_seconds'] / results['timed_epochs']:.3f})")
  print(f"last epoch: loss {results['final_loss']:.4f}, "
        f"val acc {results['validation_accuracy']:.2f}%, "
        f"train acc {results['training_accuracy']:.2f}%")


def main(argv=None):
  args = parse_args(argv)
  if torch is None:
    print('torch_reference: PyTorch is not installed (pip install torch); '
          'skipping the reference benchmark.')
    return 0
  results = run(args)
  report(results)
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=2)
    print(f'wrote {args.json}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
