"""How a network learns, in one package: what a run records about itself while it trains, and
what a series of its checkpoints shows afterwards.

- `health.py`: `HealthProbe`, one training step's per-layer gradient, weight and update
  norms, activation RMS, attention entropy and dead units, read from hook points; and
  `health_warnings` over a run's health rows;
- `series.py`: weights-only snapshots in `out_dir/checkpoints` (`keep_checkpoints`), their
  metadata, listing and loading, and the text windows the metrics read;
- `metrics.py`: metrics of one model measured on every snapshot (induction, previous-token,
  logit-lens loss, in-context learning, validation loss);
- `plots.py`: the pictures of both (`health.png`, `series_*.png`).

`mygpt2 inspect health` and `mygpt2 inspect series` (commands/inspect_dynamics.py) print and
draw them; the training loop calls the probe and the snapshot writer.
"""
