r"""The paper's experiment: (a + b) mod 9973, 300K train / 1M test pairs, seed 199.

Field names mirror the reference's flags. One run of the ``stride`` ordering:

  python main.py --config=configs/default.py --workdir=output/paper

Several runs in one batch: ``--config.strategy=all`` (stride, random, fixed-random,
target), a comma list such as ``--config.strategy=stride,random``, and/or
``--config.seeds='(1,2,3)'``, ``--config.lrs=...``, ``--config.weight_decays=...``
(their product is the batch). See docs/configs.md for every field.

How long: one epoch (1,172 steps and an evaluation on 1.3M pairs) takes about 207 s on a
2-core CPU (docs/benchmarks.md), so the full 5,000 epochs are about 12 days there and the
paper's stride run (grokking near epoch 490) about a day: use a GPU. A first look on a
CPU: --config.stop_after=5 (about 20 minutes, the first epochs of the same schedule).
"""

import ml_collections
from ml_collections import config_dict

from ordered_jax import sweep


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # What to run.
  c.strategy = 'stride'        # stride | target | random | fixed-random | alternating |
                               # resonant | file | curriculum | all | a,b (python main.py --list)
  c.seed = 199                 # data, initial weights, dropout and the random order
  c.data_seed = -1             # the pairs (and so fixed-random's order); -1 = the run's seed
  c.init_seed = -1             # the initial weights; -1 = the run's seed
  c.order_seed = -1            # random's per-epoch permutations; -1 = the run's seed
  c.seeds = ()                 # several seeds in one batch; () = (seed,)
  c.lrs = ()                   # several peak learning rates in one batch; () = (lr,)
  c.weight_decays = ()         # several weight decays in one batch; () = (weight_decay,)
  c.init_from = ''             # start from these weights: a reference .pt file or one of our runs
  c.init_optimizer = False     # with init_from = a reference checkpoint_<e>.pt: continue its run
                               # (AdamW moments, step count, epoch e + 1); docs/analysis.md
  c.lockstep = False           # compare the batch's runs every evaluated epoch (one shared
                               # init and data): <workdir>/lockstep.jsonl, docs/lockstep.md
  # Task (docs/tasks.md).
  c.task = 'add'               # add | sub | mul | div | add3 | product:AxB.. | sym:N | dihedral:N
                               # | poly:<expr in x, y>, e.g. poly:x^2+x*y+y^2
  c.p = 9973                   # prime modulus of the Z_p tasks = vocabulary = classes
  c.teacher = ml_collections.ConfigDict(dict(  # task=teacher:diagonal|random (docs/tasks.md)
      dim=8,                   # x, y in R^dim; model=dln reads x
      scale=1.0,               # diagonal: scale * diag(1..dim); random: N(0, scale^2) entries
      alpha=1.0,               # power_law: scale * diag(i^-alpha)
      rotate=False,            # diagonal, power_law: O^T D O, O Haar-random (data_seed + 4)
      noise_std=0.0,           # Gaussian label noise on the training targets
      online=False))           # true: a fresh batch every step (a function of seed, step)
  # Training examples: an int, or 'critical' (Tian's n = c M ln M (2.7482 - critical_delta)).
  c.train_size = config_dict.FieldReference(300_000, field_type=object)
  c.train_fraction = 0.0       # > 0: this share of all tuples instead of train_size
  c.critical_delta = 0.0       # train_size='critical': moves the split across the boundary
  c.test_size = 1_000_000      # 0 = every tuple not in the training set
  c.data_generator = 'auto'    # auto (reference where it exists, else fast) | reference
                               # (the paper's exact pairs) | fast (numpy)
  c.stride = 0                 # stride ordering's s; 0 = floor(sqrt(M)), M the group order
  # Model (docs/models.md): reference (the paper's GrokkingTransformer) | power | mlp.
  c.model = 'reference'
  c.mlp = ml_collections.ConfigDict(dict(  # model=mlp (Tian): hidden width = mlp_dim
      activation='sqr',        # sqr | relu | silu | relusqr
      embed_trainable=False,   # one-hot embeddings fixed (identity) or trainable
      inner_product=False,     # hidden = prod_k W_k e_k instead of act(W [e_1; e_2])
      other_layers=0,          # extra H x H layers before V, h <- act(h + U h) (Tian)
      set_weight_reg=0.0,      # > 0: V solved as ridge regression (this lambda) each step
      complex_weights=False,   # complex W and V, logits = real part (Tian's option)
      imag_init=0.0))          # complex: imaginary init, times the real parts' U(+-1/sqrt(fan_in))
  c.gpt2 = ml_collections.ConfigDict(dict(  # model=gpt2 | gpt2_resv (docs/models.md)
      tied_head=True,          # logits from the token embedding (false: a head of its own)
      value_mode='resformer'))  # gpt2_resv: resformer (v mixed with layer 0's) | svformer
  c.dln = ml_collections.ConfigDict(dict(  # model=dln, deep linear network (docs/models.md)
      depth=2,                 # weight matrices (the codebase's num_hidden + 1)
      width=16,                # hidden width
      gamma=0.5))              # init N(0, width^-gamma): 0.5 standard, 0.75 NTK, 1 mean-field
  c.embed_dim = 256
  c.num_heads = 4
  c.layers = 2
  c.mlp_dim = 2048             # PyTorch's default dim_feedforward
  c.dropout = 0.1
  c.identical_layers = True    # every encoder layer starts as a copy of the first
  # Optimisation (docs/optimization.md).
  c.optimizer = 'adamw'        # adamw | adam (coupled L2) | sgd (coupled L2) | muon
  c.lr = 1e-3
  c.min_lr = 5e-7              # cosine floor, reached at `epochs`
  c.weight_decay = 0.1
  c.adam_b1 = 0.9
  c.adam_b2 = 0.999
  c.adam_eps = 1e-8
  c.momentum = 0.9             # sgd's heavy-ball momentum (PyTorch SGD, no Nesterov)
  c.schedule = 'cosine'        # cosine (per epoch) | cosine_step | constant | step | exponential
  c.schedule_step = ml_collections.ConfigDict(  # schedule=step: lr * gamma^(epoch // every)
      dict(every=1000, gamma=0.1))
  c.schedule_gamma = 0.999     # schedule=exponential: lr * gamma^epoch
  c.warmup_epochs = 0          # linear warm-up over this many epochs (per step), 0 = none
  c.grad_clip = 0.0            # clip the gradient to this global norm, 0 = off
  c.grokfast = ml_collections.ConfigDict()  # Grokfast gradient filter (Lee et al. 2024)
  c.grokfast.kind = 'none'     # none | ema | ma
  c.grokfast.alpha = 0.98      # ema: the average's decay
  c.grokfast.lamb_ema = 2.0    # ema: amplification lambda
  c.grokfast.window = 100      # ma: window of raw gradients averaged
  c.grokfast.lamb_ma = 5.0     # ma: amplification lambda
  c.loss = 'ce'                # ce (cross-entropy) | mse (Tian's centred MSE)
  c.l1 = 0.0                   # l1 * sum |theta| added to the loss, 0 = off
  c.batch_size = 256
  c.epochs = 5000
  c.stop_after = 0             # > 0: train epochs 0..N-1 of the `epochs`-long schedule, then
                               # stop (not complete; --resume continues); 0 = all of them
  # Scheduled interventions, 'epoch:value' lists (docs/optimization.md#interventions):
  c.interventions = ml_collections.ConfigDict(dict(
      lr='',                   # e.g. '1000:0.1,2000:0.01': x factor on the scheduled rate from epoch on
      batch_size=''))          # e.g. '200:512': this batch size from epoch on
  c.resonant = ml_collections.ConfigDict(dict(  # strategy=resonant's dataset (reference HEAD)
      n_harmonics=4, overlap_frac=0.4, n_cycles=3))
  c.order_file = ''            # strategy=file: a .npy of row orders, [N] (every epoch) or
                               # [epochs, N] (row e for epoch e, cycling)
  c.curriculum = ml_collections.ConfigDict(dict(  # strategy=curriculum: by per-example loss
      direction='easiest',     # easiest | hardest first
      every=1))                # recompute the losses every N epochs
  # Evaluation and stopping.
  c.target_acc = 99.5          # stop a run when its validation accuracy (percent) reaches it
  c.eval_every = 1
  c.eval_batch_size = 2048     # the reference's 8 * batch_size
  c.probe_every = 10           # the reference's snapshot_every: snapshot probes (phases,
                               # progress, curvature) and an evaluation every N epochs
  # Probes (training-dynamics metrics, docs/probes.md); none by default.
  c.probes = ml_collections.ConfigDict()
  c.probes.group = 'none'      # none | minimal | observers | interventions | full
  c.probes.names = ''          # extra probes, comma-separated, e.g. 'fourier,curvature'
  c.probes.every = 1           # per-epoch probes every N epochs; 1 = the reference (every
                               # epoch); N > 1 thins them out (docs/probes.md#cadence)
  c.probes.reference_weights = ''  # '' | 'auto' (this workdir's earlier run) | a workdir
  c.probes.hessian = ml_collections.ConfigDict(   # the reference's bursts of steps
      dict(every_n_steps=1000, burst_length=11, warmup=1000))
  c.probes.adam_dynamics = ml_collections.ConfigDict(
      dict(every_n_steps=500, burst_length=10, warmup=500))
  c.probes.counterfactual = ml_collections.ConfigDict(  # K shuffled replays per firing
      dict(k=3, window=20, parallel=1,   # (the validator K + 1); parallel: at once (0: all)
           every_epoch_until=50))  # every epoch below this one, then every probe_every
  c.probes.progress = ml_collections.ConfigDict(   # Nanda et al.'s progress measures
      dict(n_key=5, strip_rows=8, train_pairs=8192))
  c.probes.curvature = ml_collections.ConfigDict()
  c.probes.curvature.batch_size = 512   # fixed probe batch: the first N training pairs
  c.probes.curvature.k = 3              # top Hessian eigenvalues reported
  c.probes.curvature.lanczos_steps = 20
  c.probes.curvature.hutchinson_samples = 8
  c.probes.curvature.every_n_steps = 1000  # at most once per 1000 steps (0: every probe epoch)
  c.probes.gradient_noise = ml_collections.ConfigDict(  # |g|^2, Tr(Sigma), Tr(H Sigma)
      dict(chunk=64,           # per-example gradients held at once
           hessian=True))      # also Tr(H Sigma) (N Hessian-vector products per firing)
  # Outputs.
  c.checkpoint_every = 50      # epochs; also at the end, on SIGINT/SIGTERM
  c.keep_checkpoints = 3       # keep the latest N checkpoints ...
  c.keep_every = 500           # ... and every keep_every-th epoch (0 = none)
  c.tensorboard = True
  c.csv = False
  c.wandb = ml_collections.ConfigDict(dict(  # optional W&B sink (pip install wandb)
      project='',              # '' = off; else log every run's rows, config, environment
      entity='',               # W&B team or user ('' = the default)
      mode='online'))          # online | offline (files under <run>/wandb, wandb sync later)
  c.trajectory = ml_collections.ConfigDict(dict(  # the weights every N epochs (docs/outputs.md)
      every=0,                 # 0 = off; N: <run>/trajectory.npy gets the initial weights, those
                               # after epochs 0, N, 2N, ... and the final ones
      projection='none',       # none (float32 parameters) | random:K (Gaussian projection to K)
      seed=0))                 # the projection's seed
  # Numerics.
  c.deterministic = True       # XLA deterministic GPU kernels
  c.matmul_precision = 'highest'  # float32 matmuls (no TF32), as the reference
  # Sweeps (docs/sweeps.md): grid and zip mirror every field above as a string of values,
  # e.g. --config.sweep.grid.seed=0..8 --config.sweep.grid.weight_decay=0.1,1.0
  c.sweep = ml_collections.ConfigDict()
  c.sweep.max_runs_per_batch = 0   # runs per vmapped batch; 0 = from a memory estimate
  c.sweep.single_batch = False     # all runs in one batch, or stop (shapes must match)
  c.sweep.grid = sweep.mirror(c)   # cartesian product of every non-empty key
  c.sweep.zip = sweep.mirror(c)    # non-empty keys covary (equal lengths), x the grid
  return c
