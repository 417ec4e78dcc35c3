"""Mutation testing: plant one realistic single-line bug at a time and check that a test fails.

Each mutant is (file, exact original text, replacement, description). For every mutant the
repository (source and tests; not .venv, .git or caches) is copied into a temporary directory,
the edit is applied there, and the module's test files run in the copy:

    .venv/bin/python -m pytest -x -q -p no:cacheprovider <tests>

with the copy as working directory and first on PYTHONPATH, under a per-mutant timeout. A
failing (or timed-out) run means the mutant was *caught*; a passing run means it *survived*:
either a real gap in the tests or an equivalent mutant (same behaviour). When pytest itself
fails (a collection or import error, not a failing test), the same copy runs again without
the mutant: if that fails too, the copy caught someone's half-done edit, not the mutant, and
the result is an *error*, left out of the score. The real working tree is only read, never
written: others may be running tests in it.

Mutants are written against the source as it is; when the original text is no longer found
(the code moved on) the mutant is reported as *stale*, and *ambiguous* when the text occurs
more than once. Before the mutants of a module run, the unmutated copy runs the same tests:
they must pass (and import mygpt2 from the copy), or that module's results would mean nothing.

    python scripts/mutate.py --module model          # one module: model generate data train ...
    python scripts/mutate.py --module all --jobs 2   # everything, two mutants at a time
    python scripts/mutate.py --list                  # the mutants and whether each still applies
    python scripts/mutate.py --only model-03,data-07 # chosen mutants

Not a pytest test and not run in CI: the whole run takes minutes. Results: docs/MUTATION.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import mutants_tools  # scripts/mutants_tools.py: python puts this script's folder on sys.path

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
IGNORE = shutil.ignore_patterns(
    ".venv",
    ".git",
    "__pycache__",
    ".hypothesis",
    ".ruff_cache",
    ".pytest_cache",
    "*.egg-info",
    "data_cache",
    "out",
    "out-*",
    "build",
    "dist",
)

# the test files each module's mutants are run against
TESTS = {
    "model": [
        "tests/test_model.py",
        "tests/test_generate.py",
        "tests/test_hf.py",
        "tests/test_loss.py",
    ],
    "generate": ["tests/test_generate.py", "tests/test_sampling_settings.py"],
    "data": ["tests/test_data.py"],
    "train": ["tests/test_train.py"],
    "hf": ["tests/test_hf.py"],
    "tokenizer": ["tests/test_tokenizer.py"],
    "prepare": ["tests/test_prepare.py"],
}


@dataclass(frozen=True)
class Mutant:
    module: str  # a key of TESTS
    file: str  # relative to the repository root
    original: str  # exact text, found exactly once in the file
    replacement: str
    description: str
    issue: bool = False  # one of the bugs issue #10 found slipping through every test


M, G, D, TRAIN = "mygpt2/model.py", "mygpt2/generate.py", "mygpt2/data.py", "mygpt2/train.py"

MUTANTS_BY_MODULE: dict[str, list[Mutant]] = {
    "model": [
        Mutant(
            "model",
            G,
            "return torch.arange(S, device=device)[None, :] <= rows",
            "return torch.arange(S, device=device)[None, :] < rows",
            "KV-cache chunk mask: a new token does not see itself",
            issue=True,
        ),
        Mutant(
            "model",
            G,
            "rows = torch.arange(t, device=device)[:, None] + self.length",
            "rows = torch.arange(t, device=device)[:, None] + self.length + 1",
            "KV-cache chunk mask off by one: a new token sees the next one",
            issue=True,
        ),
        Mutant(
            "model",
            M,
            'F.gelu(self.c_fc(x, cache), approximate="tanh")',
            "F.gelu(self.c_fc(x, cache))",
            "exact GELU instead of GPT-2's tanh form",
            issue=True,
        ),
        Mutant(
            "model",
            M,
            "dropout_p=self.dropout if self.training else 0.0,",
            "dropout_p=self.dropout,",
            "attention dropout left on in eval mode",
            issue=True,
        ),
        Mutant(
            "model",
            M,
            "y = rows @ self.weight if self.bias is None else torch.addmm(self.bias, rows, self.weight)",
            "y = rows @ self.weight",
            "Linear drops its bias",
        ),
        Mutant(
            "model",
            M,
            "q, k, v = self.c_attn(x, cache).split(self.n_emb, dim=2)",
            "q, v, k = self.c_attn(x, cache).split(self.n_emb, dim=2)",
            "keys and values swapped",
        ),
        Mutant(
            "model",
            M,
            "self.c_proj(y.transpose(1, 2).contiguous().view(B, t, C), cache)",
            "self.c_proj(y.contiguous().view(B, t, C), cache)",
            "heads merged without transposing back",
        ),
        Mutant(
            "model",
            M,
            "is_causal = mask is None and t > 1",
            "is_causal = False",
            "full forward not causal",
        ),
        Mutant(
            "model",
            M,
            "if cache.length > 0 and mask is None:",
            "if cache.length > 0:",
            "a chunk after a left-padded prefill loses its padding mask",
        ),
        Mutant(
            "model",
            M,
            'return x + self.mlp(self.ln_2(x), None, "", cache)',
            'return x + self.mlp(self.ln_1(x), None, "", cache)',
            "MLP reads ln_1 instead of ln_2",
        ),
        Mutant(
            "model",
            M,
            "x = x + self.attn(self.ln_1(x), cache, layer, mask, None, rope)",
            "x = self.attn(self.ln_1(x), cache, layer, mask, None, rope)",
            "attention output replaces the residual stream",
        ),
        Mutant(
            "model",
            G,
            "self._pending = t",
            "self._pending = 1",
            "KV cache advances one token per forward",
        ),
        Mutant(
            "model",
            M,
            "pos = torch.arange(start, start + t, device=idx.device)",
            "pos = torch.arange(0, t, device=idx.device)",
            "positions restart at 0 after a cached prefix",
        ),
        Mutant(
            "model",
            M,
            "key_ok = keys[None, :] >= cache.pad[:, None]  # (B, S)",
            "key_ok = keys[None, :] > cache.pad[:, None]  # (B, S)",
            "left padding hides each row's first real token",
        ),
        Mutant(
            "model",
            M,
            "causal = keys[None, :] <= (torch.arange(t, device=idx.device) + start)[:, None]",
            "causal = keys[None, :] <= (torch.arange(t, device=idx.device) + start + 1)[:, None]",
            "padded-batch mask sees one future token",
        ),
        Mutant(
            "model",
            M,
            "if start + t > self.config.T:",
            "if start + t >= self.config.T:",
            "a full-length context is refused",
        ),
        Mutant(
            "model",
            M,
            "nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))",
            "nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(cfg.n_layers))",
            "residual projections scaled by 1/sqrt(n_layers)",
        ),
        Mutant(
            "model",
            M,
            "self.lm_head.weight = self.transformer.wte.weight  # tied input/output embeddings",
            "pass",
            "output head not tied to the token embedding",
        ),
        Mutant(
            "model",
            M,
            "math.ceil(cfg.vocab_size / 64) * 64 if cfg.pad_vocab else cfg.vocab_size",
            "math.floor(cfg.vocab_size / 64) * 64 + 64 if cfg.pad_vocab else cfg.vocab_size",
            "padded vocabulary grows by 64 even when already a multiple",
        ),
        Mutant(
            "model",
            M,
            "            n -= self.transformer.wte.weight.numel()\n",
            "",
            "non-embedding count keeps the token embedding",
        ),
        Mutant(
            "model",
            M,
            "return 6 * matmul_weights + 12 * cfg.n_layers * cfg.n_emb * T",
            "return 6 * matmul_weights + 6 * cfg.n_layers * cfg.n_emb * T",
            "attention FLOPs halved",
        ),
        Mutant(
            "model",
            M,
            "if not 1 <= T <= self.config.T:",
            "if not 1 <= T:",
            "crop_context accepts a longer context",
        ),
        Mutant(
            "model",
            M,
            "wpe.weight = nn.Parameter(wpe.weight[:T].detach().clone())",
            "wpe.weight = nn.Parameter(wpe.weight[-T:].detach().clone())",
            "crop_context keeps the last position embeddings",
        ),
        Mutant(
            "model",
            M,
            "            return self.transformer.ln_f(x)\n",
            "            return x\n",
            "final LayerNorm skipped",
        ),
        Mutant(
            "model",
            M,
            "x = x[:, -1:, :]  # generation only needs the next-token distribution",
            "x = x",
            "a cached forward computes the logits of every new position",
        ),
        Mutant(
            "model",
            M,
            "if cache is not None and bool(cache.pad.any()):",
            "if cache is not None and bool(cache.pad.all()):",
            "the padding mask only when every row is padded",
        ),
        Mutant(
            "model",
            M,
            "ignore_index=-100,",
            "ignore_index=0,",
            "the loss counts -100 targets",
        ),
        Mutant(
            "model",
            M,
            "looked_only = not (edited_scale or edited)",
            "looked_only = True",
            "a hook's edit of a norm's scale or normalized input is dropped without gradients",
        ),
    ],
    "generate": [
        Mutant(
            "generate",
            "mygpt2/sampling_settings.py",
            "if temperature < 0:",
            "if temperature <= 0:",
            "greedy (temperature 0) refused",
        ),
        Mutant(
            "generate",
            "mygpt2/sampling_settings.py",
            "if top_k < 0:",
            "if top_k <= 0:",
            "top_k=0 refused instead of off",
        ),
        Mutant(
            "generate",
            "mygpt2/sampling_settings.py",
            "if not 0.0 < top_p <= 1.0:",
            "if not 0.0 <= top_p <= 1.0:",
            "top_p=0 accepted",
        ),
        Mutant(
            "generate",
            G,
            "return logits.max(dim=-1).indices",
            "return logits.min(dim=-1).indices",
            "greedy picks the least likely token",
        ),
        Mutant(
            "generate",
            G,
            "logits = logits / temperature",
            "logits = logits * temperature",
            "temperature multiplies the logits",
        ),
        Mutant(
            "generate",
            G,
            "logits, candidates = torch.topk(logits, top_k, dim=-1)",
            "logits, candidates = torch.topk(logits, top_k - 1 or 1, dim=-1)",
            "top-k keeps k - 1 tokens",
        ),
        Mutant(
            "generate",
            G,
            "mass_before = torch.cumsum(probs, dim=-1) - probs",
            "mass_before = torch.cumsum(probs, dim=-1)",
            "top-p drops the token that reaches the mass",
        ),
        Mutant(
            "generate",
            G,
            'logits = logits.masked_fill(mass_before >= top_p, float("-inf"))',
            'logits = logits.masked_fill(mass_before > top_p, float("-inf"))',
            "top-p keeps one token too many at an exact boundary",
        ),
        Mutant(
            "generate",
            G,
            "if top_p is not None and top_p < 1.0:",
            "if top_p is not None and top_p < 0.5:",
            "top-p ignored above 0.5",
        ),
        Mutant(
            "generate",
            G,
            "choice = candidates.gather(-1, choice)",
            "choice = choice",
            "top-k/top-p return a column index, not a token id",
        ),
        Mutant(
            "generate",
            G,
            "return prompts.view(1, -1).tolist() if prompts.dim() == 1 else prompts.tolist()",
            "return prompts.view(-1, 1).tolist() if prompts.dim() == 1 else prompts.tolist()",
            "a 1-D tensor prompt becomes a batch of one-token prompts",
        ),
        Mutant(
            "generate",
            G,
            "bad = [t for t in r if not 0 <= t < cfg.vocab_size]",
            "bad = [t for t in r if not 0 <= t <= cfg.vocab_size]",
            "prompt id == vocab_size accepted",
        ),
        Mutant(
            "generate",
            G,
            "if max_new_tokens < 0:",
            "if max_new_tokens <= 0:",
            "max_new_tokens=0 refused",
        ),
        Mutant(
            "generate",
            G,
            "rows = [r[-cfg.T :] for r in rows]",
            "rows = [r[: cfg.T] for r in rows]",
            "long prompts keep their first T tokens",
        ),
        Mutant(
            "generate",
            G,
            "tokens = torch.tensor([[0] * (L - len(r)) + r for r in rows], dtype=torch.long, device=device)",
            "tokens = torch.tensor([r + [0] * (L - len(r)) for r in rows], dtype=torch.long, device=device)",
            "short prompts right-padded",
        ),
        Mutant(
            "generate",
            G,
            "if not use_cache and bool(pad.any()):",
            "if False:",
            "prompts of different lengths accepted without a cache",
        ),
        Mutant(
            "generate",
            G,
            "generator.manual_seed(seed)",
            "generator.seed()",
            "the seed is ignored",
        ),
        Mutant(
            "generate",
            G,
            "nxt = nxt.masked_fill(finished, -1)",
            "nxt = nxt",
            "stopped rows keep yielding tokens",
        ),
        Mutant(
            "generate",
            G,
            "finished |= torch.isin(nxt, stops)",
            "finished = torch.isin(nxt, stops)",
            "a stopped row restarts on the next step",
        ),
        Mutant(
            "generate",
            G,
            "if bool(finished.all()):",
            "if bool(finished.any()):",
            "the stream ends when the first row stops",
        ),
        Mutant(
            "generate",
            G,
            "elif cache.length < cfg.T:",
            "elif cache.length <= cfg.T:",
            "the cache is not rebuilt when full",
        ),
        Mutant(
            "generate",
            G,
            "cut = tokens.size(1) - cfg.T",
            "cut = tokens.size(1) - cfg.T + 1",
            "the sliding window keeps T - 1 tokens",
        ),
        Mutant(
            "generate",
            G,
            "cache.pad = (cache.pad - cut).clamp(min=0)",
            "cache.pad = cache.pad",
            "left padding not shifted with the window",
        ),
        Mutant(
            "generate",
            G,
            "stack.callback(model.train, model.training)",
            "stack.callback(model.train, True)",
            "generation leaves the model in training mode",
        ),
        Mutant(  # the cut moved into GPT.head (one place for every consumer)
            "generate",
            M,
            "if logits.size(-1) != self.config.vocab_size:  # a view, no copy",
            "if False:",
            "padded vocabulary ids can be sampled",
        ),
    ],
    "data": [
        Mutant(
            "data",
            D,
            "self.starts = range(0, len(tokens) - 1, T)",
            "self.starts = range(0, len(tokens), T)",
            "a block may start at the last token",
        ),
        Mutant(
            "data",
            D,
            "block = torch.from_numpy(self.tokens[s : s + self.T + 1].astype(np.int64))",
            "block = torch.from_numpy(self.tokens[s : s + self.T].astype(np.int64))",
            "blocks read T tokens, not T + 1",
        ),
        Mutant(
            "data",
            D,
            "y = torch.cat([y, torch.full((pad,), IGNORE_INDEX, dtype=torch.int64)])",
            "y = torch.cat([y, torch.full((pad,), self.pad_id, dtype=torch.int64)])",
            "padded targets count in the loss",
        ),
        Mutant(
            "data",
            D,
            "if len(tokens) < 2:",
            "if len(tokens) < 1:",
            "a single token accepted as a dataset",
        ),
        Mutant(
            "data",
            D,
            "if not 0 <= i < self.length:",
            "if not 0 <= i <= self.length:",
            "item == length does not raise IndexError",
        ),
        Mutant(
            "data",
            D,
            "self._order = (epoch, np.random.default_rng([self.seed, epoch]).permutation(n))",
            "self._order = (epoch, np.random.default_rng(self.seed).permutation(n))",
            "every pass has the same order",
        ),
        Mutant(
            "data",
            D,
            "per_pass = batch_size * world_size",
            "per_pass = batch_size",
            "macro batch need not divide among the processes",
        ),
        Mutant(
            "data",
            D,
            "first = step * self.macro + self.rank * self.per_rank + micro * self.batch_size",
            "first = step * self.macro + self.rank * self.batch_size + micro * self.batch_size",
            "ranks' shards overlap",
        ),
        Mutant(
            "data",
            D,
            "if self.position >= len(self):",
            "if self.position > len(self):",
            "next_batch runs one batch past the end",
        ),
        Mutant(
            "data",
            D,
            'or state.get("shuffle", self.dataset.shuffle) != self.dataset.shuffle',
            "or False",
            "resume across a shuffle change accepted",
        ),
        Mutant(
            "data",
            D,
            "position = step * self.accum  # the same items, counted in the new layout",
            "position = step * old_accum",
            "resume in a new layout counts steps in the old one",
        ),
        Mutant(
            "data",
            D,
            'if micro or state["macro_batch_size"] != self.macro:',
            "if micro:",
            "resume across a macro_batch_size change accepted",
        ),
        Mutant(
            "data",
            D,
            "self.total_batches = -(-len(dataset) // batch_size)  # the last one may be short",
            "self.total_batches = len(dataset) // batch_size",
            "the short last val batch is dropped",
        ),
        Mutant(
            "data",
            D,
            "self.num_batches = min(eval_batches, max(1, self.total_batches // world_size))",
            "self.num_batches = min(eval_batches, self.total_batches // world_size)",
            "a tiny val split gives some ranks no batch",
        ),
        Mutant(
            "data",
            D,
            "b = (self.rank + k * self.world_size) % self.total_batches",
            "b = (k * self.world_size) % self.total_batches",
            "every rank evaluates the same batches",
        ),
        Mutant(
            "data",
            D,
            "return macro_batch_size // per_pass",
            "return macro_batch_size // batch_size",
            "accumulation steps ignore the number of processes",
        ),
        Mutant(
            "data",
            D,
            'return int(meta["newline_id"])',
            "return newline_id(tok)",
            "padding id from the tokenizer, not from meta.json",
        ),
        Mutant(
            "data",
            D,
            "need = T + 1",
            "need = T",
            "a split of T tokens passes the block-size check",
        ),
        Mutant(
            "data",
            D,
            "steps = blocks // t.macro_batch_size",
            "steps = -(-blocks // t.macro_batch_size)",
            "single_pass runs a partial last macro batch",
        ),
        Mutant(
            "data",
            D,
            "val_set = BlockPairDataset(val_tokens, T, pad_id=pad_id)",
            "val_set = BlockPairDataset(val_tokens, T)",
            "val batches padded with GPT-2's newline, not the tokenizer's",
        ),
        Mutant(
            "data",
            D,
            "train_set = BlockPairDataset(\n        train_tokens, T, pad_id=pad_id, shuffle=t.shuffle, seed=cfg.run.seed\n    )",
            "train_set = BlockPairDataset(\n        train_tokens, T, pad_id=pad_id, shuffle=t.shuffle, seed=0\n    )",
            "the shuffle ignores the run's seed",
        ),
    ],
    "train": [
        Mutant(
            "train",
            TRAIN,
            "weight = world / count.clamp(min=1).to(torch.float32)",
            "weight = 1 / count.clamp(min=1).to(torch.float32)",
            "DDP gradients averaged twice",
        ),
        Mutant(
            "train",
            TRAIN,
            "count = torch.stack([(y != IGNORE_INDEX).sum() for _, y in batches]).sum().to(device)",
            "count = torch.stack([(y != IGNORE_INDEX).sum() for _, y in batches[:1]]).sum().to(device)",
            "the token count of a step comes from its first micro-batch",
        ),
        Mutant(
            "train",
            TRAIN,
            "loss_value = (loss_sum / count.clamp(min=1)).item()",
            "loss_value = (loss_sum / len(batches)).item()",
            "reported loss per micro-batch, not per token",
        ),
        Mutant(
            "train",
            TRAIN,
            "if not math.isfinite(loss_value):",
            "if math.isnan(loss_value):",
            "an infinite loss is not stopped",
        ),
        Mutant(
            "train",
            TRAIN,
            "scaler.unscale_(optimizer)  # clip (and report) the true gradients, not scaled ones",
            "pass",
            "fp16 gradients clipped while still scaled",
        ),
        Mutant(
            "train",
            TRAIN,
            "optimizer.zero_grad(set_to_none=True)",
            "pass",
            "gradients accumulate across steps",
        ),
        Mutant(
            "train",
            TRAIN,
            "lr = get_lr(run.step, run.cfg)",
            "lr = get_lr(run.step + 1, run.cfg)",
            "learning-rate schedule one step ahead",
        ),
        Mutant(
            "train",
            TRAIN,
            "evaluated = run.step % t.eval_interval == 0 or run.step == t.max_steps",
            "evaluated = run.step % t.eval_interval == 0",
            "no evaluation at the last step",
        ),
        Mutant(
            "train",
            TRAIN,
            "run.best_val = min(run.best_val, run.val_loss)",
            "run.best_val = run.val_loss",
            "best_val_loss follows a worse loss",
        ),
        Mutant(
            "train",
            TRAIN,
            "count = torch.stack([(y != IGNORE_INDEX).sum() for _, y in batches]).sum().to(device)",
            "count = torch.stack([torch.tensor(y.numel()) for _, y in batches]).sum().to(device)",
            "a training step divides by padded targets too",
        ),
        Mutant(
            "train",
            "mygpt2/evaluation/text.py",
            "    finally:\n        model.train(was_training)\n    return nats, count",
            "    finally:\n        pass\n    return nats, count",
            "evaluation leaves the model in eval mode",
        ),
        Mutant(
            "train",
            "mygpt2/run_setup.py",
            "return min(t.max_steps, t.stop_at) if t.stop_at else t.max_steps",
            "return t.max_steps",
            "stop_at ignored",
        ),
        Mutant(
            "train",
            "mygpt2/run_setup.py",
            'train_loader.load_state_dict(ckpt["data"])',
            "pass",
            "resume restarts the data",
        ),
        Mutant(
            "train",
            "mygpt2/run_setup.py",
            'restore_optimizer(optimizer, ckpt["optimizer"], saved_optimizer, cfg)',
            'optimizer.load_state_dict(ckpt["optimizer"])',
            "given optimizer flags ignored on resume",
        ),
        Mutant(
            "train",
            "mygpt2/run_setup.py",
            'set_rng_state(ckpt["rng"][dist_info.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])',
            "pass",
            "RNG states not restored on resume",
        ),
        Mutant(
            "train",
            "mygpt2/run_setup.py",
            "if t.single_pass:  # one epoch: the data decides the length (and so the LR schedule)",
            "if False:",
            "single_pass keeps max_steps",
        ),
        Mutant(
            "train",
            "mygpt2/run_setup.py",
            "cfg = copy.deepcopy(cfg)  # the resolution below (paths, vocab size, ...) is the run's own",
            "cfg = cfg",
            "train() changes the caller's config",
        ),
        Mutant(
            "train",
            M,  # GPT.set_dropout: init_from and resume call it
            "                m.p = p\n",
            "                pass\n",
            "a given dropout not applied to init_from weights",
        ),
        Mutant(
            "train",
            TRAIN,
            "periodic = t.checkpoint_interval and run.step % t.checkpoint_interval == 0",
            "periodic = False",
            "no periodic checkpoints",
        ),
    ],
    "hf": [
        Mutant(
            "hf",
            "mygpt2/hf.py",
            "    return model.to(dtype)\n",
            "    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())\n"
            "    return model.to(dtype)\n",
            "from_pretrained unties lm_head from wte (same values)",
            issue=True,
        ),
    ],
    "tokenizer": [
        Mutant(
            "tokenizer",
            "mygpt2/tokenizer_files.py",
            'keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]',
            'keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 2)]',
            "byte alphabet keeps the soft hyphen: a wrong but self-consistent bijection",
            issue=True,
        ),
    ],
    "prepare": [
        Mutant(
            "prepare",
            "mygpt2/prepare.py",
            "n_train = int(n_total * cfg.data.split)",
            "n_train = n_total - int(n_total * (1 - cfg.data.split))",
            "train/val boundary rounded the other way (val rounded down, train up)",
            issue=True,
        ),
        Mutant(
            "prepare",
            "mygpt2/prepare.py",
            "n_train = int(n_total * cfg.data.split)",
            "n_train = round(n_total * cfg.data.split)",
            "train/val boundary rounded to nearest",
            issue=True,
        ),
    ],
}


# the other modules (issue 22): rows of (file, original, replacement, description)
TESTS.update(mutants_tools.TESTS)
for _module, _rows in mutants_tools.ROWS.items():
    MUTANTS_BY_MODULE[_module] = [Mutant(_module, *row) for row in _rows]


def all_mutants() -> list[tuple[str, Mutant]]:
    """(id, mutant) pairs, ids like model-03, numbered within each module."""
    return [
        (f"{module}-{i:02d}", m)
        for module, mutants in MUTANTS_BY_MODULE.items()
        for i, m in enumerate(mutants, 1)
    ]


def applicability(m: Mutant) -> str:
    """'ok', 'stale' (original text not found) or 'ambiguous' (found more than once)."""
    path = REPO / m.file
    if not path.is_file():
        return "stale"
    n = path.read_text(encoding="utf-8").count(m.original)
    return "ok" if n == 1 else "stale" if n == 0 else "ambiguous"


# ----------------------------------------------------------------------------- running


RAN = ("caught", "survived", "timeout")  # the statuses that count in a score


@dataclass
class Result:
    status: str  # caught, survived, timeout, stale, ambiguous, baseline-failed, error
    seconds: float = 0.0
    detail: str = ""  # the first failing test, or why nothing ran


def make_copy(root: Path) -> Path:
    """Copy the repository to root/repo; root/shared points at the real shared data."""
    copy = root / "repo"
    shutil.copytree(REPO, copy, ignore=IGNORE, symlinks=True)
    shared = REPO.parent / "shared"
    if shared.exists():  # tests/conftest.py finds ../shared/data next to the repository
        (root / "shared").symlink_to(shared)
    return copy


def environment(copy: Path, threads: int | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("CI", None)  # a missing shared file should skip, as on a developer machine
    if threads:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
    return env


_LIVE: set[subprocess.Popen] = set()  # running pytest processes, killed on Ctrl-C
_LIVE_LOCK = threading.Lock()


def run_tests(
    copy: Path, tests: list[str], timeout: float, threads: int | None
) -> tuple[str, float, str]:
    """Run pytest in the copy: ('passed' | 'failed' | 'timeout', seconds, first failure)."""
    cmd = [str(PYTHON), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        cwd=copy,
        env=environment(copy, threads),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills its children too
    )
    with _LIVE_LOCK:
        _LIVE.add(proc)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return "timeout", time.monotonic() - t0, f"no result within {timeout:.0f} s"
    finally:
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    seconds = time.monotonic() - t0
    if proc.returncode == 0:
        return "passed", seconds, ""
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", out, flags=re.M)
    detail = failed[0] if failed else (out.strip().splitlines() or ["?"])[-1]
    return "failed", seconds, f"rc={proc.returncode} {detail}"


def run_mutant(m: Mutant, tests: list[str], timeout: float, threads: int | None) -> Result:
    state = applicability(m)
    if state != "ok":
        return Result(
            state,
            detail=f"original text {'not found' if state == 'stale' else 'found more than once'} in {m.file}",
        )
    with tempfile.TemporaryDirectory(prefix="mygpt2-mutant-") as tmp:
        copy = make_copy(Path(tmp))
        target = copy / m.file
        text = target.read_text(encoding="utf-8")
        if text.count(m.original) != 1:  # the file changed while we copied it
            return Result("stale", detail="the file changed during the copy")
        target.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
        outcome, seconds, detail = run_tests(copy, tests, timeout, threads)
        if outcome == "failed" and not detail.startswith("rc=1 "):
            # not a failing test but pytest itself (collection, import, usage): a half-done edit
            # of someone else's in the copied tree does that too. The same copy without the
            # mutant must pass, or the failure is not the mutant's.
            target.write_text(text, encoding="utf-8")
            again, _, why = run_tests(copy, tests, timeout, threads)
            if again != "passed":
                return Result("error", seconds, f"{detail}; without the mutant too: {why}")
    status = {"passed": "survived", "failed": "caught", "timeout": "timeout"}[outcome]
    return Result(status, seconds, detail)


def baseline(tests: list[str], threads: int | None) -> tuple[bool, float, str]:
    """The unmutated copy must pass the module's tests and import mygpt2 from the copy."""
    with tempfile.TemporaryDirectory(prefix="mygpt2-baseline-") as tmp:
        copy = make_copy(Path(tmp))
        where = subprocess.run(
            [str(PYTHON), "-c", "import mygpt2; print(mygpt2.__file__)"],
            cwd=copy,
            env=environment(copy, threads),
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if not where.startswith(str(copy)):
            return False, 0.0, f"mygpt2 imported from {where or '?'}, not from the copy"
        outcome, seconds, detail = run_tests(copy, tests, 1800, threads)
    return outcome == "passed", seconds, detail


def describe_run(jobs: int) -> str:
    """Date, machine and code of this run, for the record (git is only read, never locked)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True
        )
        return done.stdout

    dirty = [ln[3:] for ln in git("status", "--porcelain", "--", "mygpt2", "tests").splitlines()]
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"{now}; {platform.node()}: {cpu}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}; --jobs {jobs}; HEAD {git('rev-parse', '--short', 'HEAD').strip()}"
        + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else "")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", default="all", choices=[*TESTS, "all"])
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at the same time")
    parser.add_argument("--only", default="", help="comma-separated mutant ids (model-03,...)")
    parser.add_argument("--issue", action="store_true", help="only the bugs of issue #10")
    parser.add_argument(
        "--tests",
        nargs="+",
        default=None,
        help="pytest paths or node ids to run instead of each module's test files",
    )
    parser.add_argument(
        "--timeout", type=float, default=0, help="seconds per mutant (default: 3x baseline + 60)"
    )
    args = parser.parse_args(argv)

    chosen = [
        (mid, m)
        for mid, m in all_mutants()
        if (args.module == "all" or m.module == args.module)
        and (not args.only or mid in args.only.split(","))
        and (not args.issue or m.issue)
    ]
    if args.list:
        for mid, m in chosen:
            flag = " [issue #10]" if m.issue else ""
            print(f"{mid:13} {applicability(m):9} {m.file}: {m.description}{flag}")
        return 0
    if not chosen:
        print("no mutants chosen", file=sys.stderr)
        return 2
    threads = max(1, (os.cpu_count() or 1) // args.jobs) if args.jobs > 1 else None

    print(describe_run(args.jobs), flush=True)
    results: dict[str, Result] = {}
    modules = sorted({m.module for _, m in chosen}, key=list(TESTS).index)
    timeouts: dict[str, float] = {}
    tests = {module: args.tests or TESTS[module] for module in modules}
    for module in modules:
        ok, seconds, detail = baseline(tests[module], threads)
        print(f"baseline {module}: {'passed' if ok else 'FAILED'} in {seconds:.1f} s {detail}")
        if not ok:
            for mid, m in chosen:
                if m.module == module:
                    results[mid] = Result("baseline-failed", detail=detail)
        timeouts[module] = args.timeout or 3 * seconds + 60
    todo = [(mid, m) for mid, m in chosen if mid not in results]
    t0 = time.monotonic()
    pool = ThreadPoolExecutor(max_workers=max(1, args.jobs))
    futures = {
        pool.submit(run_mutant, m, tests[m.module], timeouts[m.module], threads): (mid, m)
        for mid, m in todo
    }
    try:
        for future in as_completed(futures):
            mid, m = futures[future]
            r = results[mid] = future.result()
            print(
                f"{r.status:9} {mid:13} {r.seconds:5.1f} s  {m.description}  {r.detail}", flush=True
            )
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        with _LIVE_LOCK:
            for proc in _LIVE:
                os.killpg(proc.pid, signal.SIGKILL)
        print("interrupted", file=sys.stderr)
        return 130
    pool.shutdown()

    print(f"\n{len(todo)} mutants in {time.monotonic() - t0:.0f} s\n")
    by_module: dict[str, list[tuple[str, Mutant, Result]]] = defaultdict(list)
    for mid, m in chosen:
        by_module[m.module].append((mid, m, results[mid]))
    for module, rows in by_module.items():
        ran = [r for _, _, r in rows if r.status in RAN]
        caught = [r for r in ran if r.status != "survived"]
        score = f"{100 * len(caught) / len(ran):.0f}%" if ran else "-"
        others = [r.status for _, _, r in rows if r.status not in RAN]
        extra = (
            f" ({', '.join(f'{others.count(s)} {s}' for s in sorted(set(others)))})"
            if others
            else ""
        )
        print(
            f"{module:10} {len(caught)}/{len(ran)} caught = {score}{extra}  [{' '.join(tests[module])}]"
        )
        for mid, m, r in rows:
            if r.status not in ("caught", "timeout"):
                print(f"    {r.status:9} {mid}: {m.description} ({m.file})")
    return 1 if any(r.status == "baseline-failed" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
