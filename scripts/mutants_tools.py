"""The mutants of the toolkit's other modules (issue 22), read by scripts/mutate.py.

One row per mutant: (file, exact original text, replacement, description). Each is a bug that
someone could plausibly write: an off-by-one, a wrong default, a flipped comparison, a dropped
term, a wrong axis, swapped arguments, a missing check. `TESTS` names the test files each
module's mutants run against. Results and survivors: docs/MUTATION.md.
"""

from __future__ import annotations

HOOKS, ATT, LOSS, BPE = "mygpt2/hooks.py", "mygpt2/attention.py", "mygpt2/loss.py", "mygpt2/bpe.py"
CKPT, SERIES = "mygpt2/checkpoint.py", "mygpt2/series.py"

TESTS: dict[str, list[str]] = {
    "hooks": ["tests/test_hooks.py"],
    "attention": ["tests/test_attention.py", "tests/test_hooks.py"],
    "loss": ["tests/test_loss.py"],
    "bpe": ["tests/test_bpe.py", "tests/test_tokenizer.py"],
    "checkpoint": ["tests/test_checkpoint.py", "tests/test_sample.py"],
    "series": ["tests/test_series.py"],
}

ROWS: dict[str, list[tuple[str, str, str, str]]] = {
    "hooks": [
        (
            HOOKS,
            '"pos" in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]',
            '"pos" in code.co_varnames[: code.co_argcount]',
            "a hook with a keyword-only `pos` parameter is not given pos",
        ),
        (
            HOOKS,
            'at = block.index("attn.hook_v") + 1',
            'at = block.index("attn.hook_v")',
            "rope / qk_norm hook names listed before hook_v, not after it",
        ),
        (
            HOOKS,
            'embeds = ["hook_embed", "hook_pos_embed"] if pos_emb == "learned" else ["hook_embed"]',
            'embeds = ["hook_embed", "hook_pos_embed"] if pos_emb != "none" else ["hook_embed"]',
            "rope models list a hook_pos_embed they never fire",
        ),
        (
            HOOKS,
            "if m and m[2] in BLOCK_HOOKS and int(m[1]) >= n_layers:",
            "if m and m[2] in BLOCK_HOOKS and int(m[1]) > n_layers:",
            "blocks.{n_layers} (one past the last layer) not named as a missing layer",
        ),
        (
            HOOKS,
            "            if not matched:\n",
            "            if matched is None:\n",
            "a glob that matches nothing is accepted silently",
        ),
        (
            HOOKS,
            "            x = out\n        return x",
            "        return x",
            "a hook's returned tensor does not replace the activation",
        ),
        (
            HOOKS,
            "if out.shape != x.shape or out.dtype != x.dtype or out.device != x.device:",
            "if out.shape != x.shape or out.device != x.device:",
            "a hook returning another dtype is accepted",
        ),
        (
            HOOKS,
            "table.setdefault(name, []).extend(fns)",
            "table[name] = fns + table.get(name, [])",
            "new hooks run before the hooks already active, not after",
        ),
        (
            HOOKS,
            "    finally:\n        model.active_hooks = previous",
            "    finally:\n        model.active_hooks = None",
            "leaving a nested hooks context removes the outer context's hooks too",
        ),
        (
            HOOKS,
            "if idx.shape[1] > cfg.T:",
            "if idx.shape[1] >= cfg.T:",
            "exactly T tokens refused as too long",
        ),
        (
            HOOKS,
            "if low < 0 or high >= cfg.vocab_size:",
            "if low < 0 or high > cfg.vocab_size:",
            "token id vocab_size (one past the last) accepted",
        ),
        (
            HOOKS,
            "        if grad and x.requires_grad:\n            x.retain_grad()",
            "        if grad and not x.requires_grad:\n            x.retain_grad()",
            "run_with_cache(grad=True) keeps no gradients",
        ),
        (
            HOOKS,
            'names = [f"blocks.{i}.{suffix}" for i in range(self.n_layers)]',
            'names = [f"blocks.{i}.{suffix}" for i in range(1, self.n_layers)]',
            "cache.stack leaves out layer 0",
        ),
    ],
    "attention": [
        (
            ATT,
            ".div_(math.sqrt(q.size(-1)))",
            ".div_(math.sqrt(q.size(-2)))",
            "scores divided by sqrt(sequence length), not sqrt(head size): wrong axis",
        ),
        (
            ATT,
            "device=q.device).tril()",
            "device=q.device).tril(1)",
            "causal mask off by one: a query sees the next key",
        ),
        (
            ATT,
            'masked_fill_(~mask, float("-inf"))',
            'masked_fill_(mask, float("-inf"))',
            "mask inverted: attends exactly where it may not",
        ),
        (
            ATT,
            "scores.softmax(dim=-1, dtype=torch.float32)",
            "scores.softmax(dim=-2, dtype=torch.float32)",
            "softmax over queries, not keys: wrong axis",
        ),
        (
            ATT,
            "pattern = pattern.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)",
            "pattern = pattern",
            "a query that sees no key (left padding) gets NaN, not zeros",
        ),
        (
            ATT,
            "if is_causal and mask is None:",
            "if is_causal and mask is not None:",
            "no causal mask when none is given",
        ),
        (
            ATT,
            "B * nh * t * k.size(-2) <= WRITTEN_OUT_MAX_SCORES",
            "B * nh * t * k.size(-2) < WRITTEN_OUT_MAX_SCORES",
            "scores of exactly WRITTEN_OUT_MAX_SCORES elements go to SDPA",
        ),
        (
            ATT,
            "        and torch.is_grad_enabled()\n",
            "",
            "the written-out path taken without autograd too (missing check)",
        ),
        (
            ATT,
            "B * nh * t * k.size(-2) <= WRITTEN_OUT_MAX_SCORES",
            "B * nh * t * t <= WRITTEN_OUT_MAX_SCORES",
            "score size counted as t x t, forgetting the cached keys",
        ),
        (
            ATT,
            "pattern = F.dropout(pattern, dropout_p)",
            "pattern = F.dropout(pattern, 1 - dropout_p)",
            "attention dropout given the keep probability",
        ),
        (
            ATT,
            'pattern = hooks(at + "hook_pattern", pattern)',
            'hooks(at + "hook_pattern", pattern)',
            "a hook's replacement of hook_pattern is ignored",
        ),
    ],
    "loss": [
        (
            LOSS,
            "total -= logp.gather(1, tc[:, None]).squeeze(1).dot(vc)",
            "total -= logp.gather(1, tc[:, None]).squeeze(1).sum()",
            "ignored (-100) targets counted in the loss",
        ),
        (
            LOSS,
            "probs[torch.arange(len(tc), device=tc.device), tc] -= 1.0",
            "probs[torch.arange(len(tc), device=tc.device), tc] += 1.0",
            "gradient: softmax plus one-hot (sign flipped)",
        ),
        (
            LOSS,
            "p = probs.mul_(vc[:, None])",
            "p = probs",
            "ignored rows still get a gradient (float32 path)",
        ),
        (
            LOSS,
            "return total / (targets != IGNORE_INDEX).sum().clamp(min=1)",
            "return total / targets.numel()",
            "the mean divides by all targets, ignored ones too",
        ),
        (
            LOSS,
            "return total / (targets != IGNORE_INDEX).sum().clamp(min=1)",
            "return total / (targets != IGNORE_INDEX).sum()",
            "mean over no valid target: NaN, not 0 (the `at least 1` dropped)",
        ),
        (
            LOSS,
            "grad_w.mul_(scale).to(w_dtype)",
            "grad_w.to(w_dtype)",
            "the weight gradient not scaled by grad_loss (1/count, loss scale)",
        ),
        (
            LOSS,
            "for s in range(0, h.shape[0], chunk_rows):",
            "for s in range(0, h.shape[0] - 1, chunk_rows):",
            "off by one: the last row is skipped when it starts a chunk",
        ),
        (
            LOSS,
            "grad_w = part.float() if grad_w is None else grad_w.add_(part)",
            "grad_w = part.float()",
            "bf16: the weight gradient keeps only the last chunk",
        ),
        (
            LOSS,
            "grad_w = pf.t() @ hf if grad_w is None else grad_w.addmm_(pf.t(), hf)",
            "grad_w = pf.t() @ hf",
            "float32: the weight gradient keeps only the last chunk",
        ),
        (
            LOSS,
            "torch.log_softmax(hc @ w.t(), dim=-1, dtype=torch.float32)",
            "torch.log_softmax(hc @ w.t(), dim=-1)",
            "under bf16 autocast the log-softmax and one-hot taken in bf16, not float32",
        ),
        (
            LOSS,
            "if torch.is_autocast_enabled(h.device.type):",
            "if False:",
            "autocast ignored: the matmuls run in float32",
        ),
    ],
    "bpe": [
        (
            BPE,
            "if len(chunk) > 1:  # a one-byte chunk",
            "if len(chunk) > 2:  # a one-byte chunk",
            "two-byte chunks left out of training",
        ),
        (
            BPE,
            "new = 256 + len(merges)",
            "new = 257 + len(merges)",
            "merge ids off by one",
        ),
        (
            BPE,
            "            sites.append(j)\n            j += 2",
            "            sites.append(j)\n            j += 1",
            "overlapping merge sites: (a, a) counted twice in aaa",
        ),
        (
            BPE,
            "counts[pair] = counts.get(pair, 0) + f",
            "counts[pair] = counts.get(pair, 0) + 1",
            "a chunk's frequency ignored in the first count",
        ),
        (
            BPE,
            "            if not text[i + 1].isspace():",
            "            if text[i + 1].isspace():",
            "documents cut before whitespace, where a chunk may cross",
        ),
        (
            BPE,
            "yield text[a : b + _CONTEXT_CHARS], b - a",
            "yield text[a:b], b - a",
            "cut pieces get no lookahead text",
        ),
        (
            BPE,
            "specials = sorted(special_tokens, key=len, reverse=True)",
            "specials = sorted(special_tokens, key=len)",
            "special tokens matched shortest first: a special inside a longer one wins",
        ),
        (
            BPE,
            "if vocab_size < 256 + num_specials:",
            "if vocab_size <= 256 + num_specials:",
            "a vocabulary of exactly 256 + specials refused",
        ),
        (
            BPE,
            "while len(merges) < num_merges:",
            "while len(merges) <= num_merges:",
            "one merge too many",
        ),
        (
            BPE,
            "if counts.get(pair) == -neg:",
            "if pair in counts:",
            "stale heap entries used: a pair merged at an outdated count",
        ),
        (
            BPE,
            "                    if last < k < n - 1:",
            "                    if last <= k < n - 1:",
            "a pair between two merge sites taken off twice",
        ),
    ],
    "checkpoint": [
        (
            CKPT,
            'if state.get("format_version", 0) > FORMAT_VERSION:',
            'if state.get("format_version", 0) > FORMAT_VERSION + 1:',
            "a checkpoint of the next format version accepted",
        ),
        (
            CKPT,
            'or "model" not in state or "config" not in state:',
            'or "model" not in state:',
            "a dict without config accepted as a checkpoint",
        ),
        (
            CKPT,
            "random.setstate((version, tuple(internal), gauss))",
            "random.seed(version)",
            "Python's RNG not restored on resume",
        ),
        (
            CKPT,
            "    np.random.set_state(np_state)\n",
            "",
            "numpy's RNG not restored on resume",
        ),
        (
            CKPT,
            '    torch.set_rng_state(state["torch"])\n',
            "",
            "torch's RNG not restored on resume",
        ),
        (
            CKPT,
            'return Path(cfg.run.checkpoint or Path(cfg.run.out_dir) / "checkpoint.pt")',
            'return Path(cfg.run.out_dir) / "checkpoint.pt"',
            "--checkpoint ignored: always out_dir/checkpoint.pt",
        ),
        (
            CKPT,
            'if saved.get("fingerprint") and saved["fingerprint"] != tok.fingerprint():',
            'if saved.get("fingerprint") and saved["name"] != tok.name:',
            "another tokenizer under the same name accepted",
        ),
        (
            CKPT,
            'if k in expected and hasattr(v, "shape") and v.shape != expected[k].shape',
            'if k not in expected and hasattr(v, "shape") and v.shape != expected[k].shape',
            "a weight of the wrong shape not named (traceback instead of a message)",
        ),
        (
            CKPT,
            '    problems += [f"unexpected {k}" for k in weights if k not in expected]\n',
            "",
            "an unexpected weight not named (traceback instead of a message)",
        ),
        (
            CKPT,
            "diff = shape_changes(saved.model, merged.model)",
            "diff = shape_changes(saved.model, cfg.model)",
            "resume compares with the command's defaults, not the merged config",
        ),
        (
            CKPT,
            "given = {k: getattr(cfg.tokenizer, k) for k in vars(saved) if k in cfg.given}",
            "given = {k: getattr(cfg.tokenizer, k) for k in vars(saved)}",
            "the checkpoint's tokenizer settings overridden by defaults",
        ),
    ],
    "series": [
        (
            SERIES,
            "return evaluated or (step > 0 and step & (step - 1) == 0)",
            "return evaluated or step & (step - 1) == 0",
            "log series keeps step 0",
        ),
        (
            SERIES,
            "return saved or evaluated\n    return False",
            "return saved\n    return False",
            "`all` series misses evaluated steps",
        ),
        (
            SERIES,
            'if k != "lm_head.weight"',
            'if k != "transformer.wte.weight"',
            "the embedding left out instead of the tied head",
        ),
        (
            SERIES,
            "return value if math.isfinite(value) else None",
            "return value",
            "a NaN or infinite val_loss read back as a number",
        ),
        (
            SERIES,
            "            if not self.warned:\n",
            "            if True:\n",
            "a full disk warned of at every snapshot",
        ),
        (
            SERIES,
            '(["step_*.safetensors"] if fresh else [])',
            '(["step_*.safetensors"] if not fresh else [])',
            "resume deletes the series, a new run keeps the old one",
        ),
        (
            SERIES,
            "width = cfg.model.T + 1",
            "width = cfg.model.T",
            "text windows one token short",
        ),
        (
            SERIES,
            "starts = torch.linspace(0, len(val_tokens) - width, count)",
            "starts = torch.linspace(0, len(val_tokens) - width - 1, count)",
            "text windows miss the last token of the split (off by one)",
        ),
        (
            SERIES,
            "if len(val_tokens) < width:",
            "if len(val_tokens) <= width:",
            "a split of exactly T + 1 tokens refused",
        ),
        (
            SERIES,
            'meta = {"format": "pt", "mygpt2_series": FORMAT}',
            'meta = {"format": "pt"}',
            "snapshots written without the series marker",
        ),
        (
            SERIES,
            "if saved and saved != tok.fingerprint():",
            "if saved and saved == tok.fingerprint():",
            "text metrics refuse the run's own tokenizer, accept another",
        ),
    ],
}
