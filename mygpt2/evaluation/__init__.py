"""Evaluation, in one package: what a model scores on text and on multiple-choice tasks.

- `text.py`: the token streams of texts, sliding windows, `score_stream` (loss, perplexity,
  bits per byte) and `batches_nll`, the one validation loss (training's `evaluate`,
  `inspect series`), all through the model's own `GPT.hidden` and `GPT.head`;
- `tasks.py`: multiple-choice files (HellaSwag's format, or a generic one) and `score_task`;
- `during_training.py`: what a training run measures at each evaluation besides its
  validation loss (`val_bpb`, `--eval_data`, `--eval_tasks`).

`mygpt2 eval` (commands/eval.py) parses its flags, loads each model and calls these.
"""

from mygpt2.evaluation.tasks import read_task, score_task
from mygpt2.evaluation.text import batches_nll, read_stream, score_stream, text_stream

__all__ = ["batches_nll", "read_stream", "read_task", "score_stream", "score_task", "text_stream"]
