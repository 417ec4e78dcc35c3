"""A training run's state and how it is built: `Run` (everything the loop carries between
steps) and `setup`, which builds a fresh run from the config or resumes one from
`out_dir/checkpoint.pt` (model, optimizer, scaler, data position, RNG states, metrics).

The loop itself is `mygpt2.train`; this module is what it stands on.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from mygpt2.checkpoint import load_checkpoint, resume_config, resumed_model, set_rng_state
from mygpt2.config import ARCHITECTURE_KNOBS, Config, format_config
from mygpt2.corpus import open_corpus
from mygpt2.data import TrainLoader, ValLoader, accum_steps, construct_data_loaders, padding_id
from mygpt2.dynamics.series import SnapshotWriter
from mygpt2.errors import MyGPT2Error
from mygpt2.evaluation.during_training import RunEvals, prepare_evals
from mygpt2.guard import check_data, data_record, resolve_input_paths
from mygpt2.hf import from_pretrained
from mygpt2.metrics import MetricsLog, Reporter
from mygpt2.model import GPT
from mygpt2.optim import check_optimizer, make_optimizer, restore_optimizer
from mygpt2.prepare import ensure_prepared
from mygpt2.runtime import (
    Distributed,
    choose_dtype,
    compile_problem,
    keep_freed_memory,
    peak_flops,
    pick_device,
)
from mygpt2.tokenizer import load_tokenizer


@dataclass
class Run:
    """Everything a training run carries from step to step (built by `setup`)."""

    cfg: Config  # resolved: the checkpoint's settings under --resume, tokenizer paths absolute
    dist: Distributed
    reporter: Reporter
    device: torch.device
    dtype: torch.dtype
    model: torch.nn.Module  # what the loop calls: compiled and/or wrapped in DDP
    raw_model: GPT  # what is saved
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    train_loader: TrainLoader
    val_loader: ValLoader
    log: MetricsLog
    tokenizer: dict[str, str]  # name and fingerprint, saved with each checkpoint
    data_source: dict[str, Any]  # data identity, fingerprint, token counts (`guard.data_record`)
    evals: RunEvals  # bits per byte, eval_data and eval_tasks at each evaluation
    ckpt_path: Path
    tokens_per_step: int
    flops_per_step: float
    peak_flops: float | None
    step: int = 0
    best_val: float = math.inf
    val_loss: float | None = None
    train_loss: float = math.nan
    signal: int = 0  # the SIGINT/SIGTERM that stopped the run
    snapshots: SnapshotWriter | None = None  # keep_checkpoints' writer, made at its first use
    elapsed_s: float = 0.0  # seconds spent in training steps, over all invocations
    reached_target: bool = False  # stopped at an evaluation at or below target_val_loss

    @property
    def end_step(self) -> int:
        """Where this invocation stops: max_steps, or stop_at when earlier."""
        t = self.cfg.train
        return min(t.max_steps, t.stop_at) if t.stop_at else t.max_steps


# ----------------------------------------------------------------------------- setup


def setup(cfg: Config, dist_info: Distributed, reporter: Reporter) -> Run:
    """Build a run from `cfg`, or resume one from `out_dir/checkpoint.pt` with `--resume`.

    Prints the resolved config before the corpus is tokenized, and the banner at the end."""
    cfg = copy.deepcopy(cfg)  # the resolution below (paths, vocab size, ...) is the run's own
    ckpt_path = Path(cfg.run.out_dir) / "checkpoint.pt"
    ckpt = None
    if cfg.train.resume:
        # the checkpoint's config, with what this command line sets on top
        ckpt = load_checkpoint(ckpt_path)
        cfg = resume_config(ckpt, cfg, ckpt_path)
        check_layout(ckpt.get("data") or {}, cfg, ckpt_path)
    t = cfg.train
    device = pick_device(cfg.run.device, dist_info.local_rank)
    dtype_choice = choose_dtype(cfg.run.dtype, device)  # the banner says which and why
    dtype = dtype_choice.dtype
    accum_steps(t.batch_size, t.macro_batch_size, dist_info.world_size)  # fail before slow work
    check_optimizer(t.optimizer)  # Muon needs a newer torch than the package does
    data_given = cfg.data.data  # as typed: a missing tokenizer's message quotes it
    resolve_input_paths(cfg)  # absolute: the checkpoint finds its inputs from any directory
    saved_data = ckpt.get("data_source") if ckpt is not None else None
    if saved_data:  # before any slow work: the data this run was trained on?
        check_data(saved_data, data_record(cfg), cfg, ckpt_path)
    torch.manual_seed(cfg.run.seed + dist_info.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    corpus = open_corpus(cfg.data)  # a missing or empty source fails before the config dump
    if corpus.total_bytes == 0:
        raise MyGPT2Error(f"the corpus is empty: {corpus.description} holds no text.")
    vocab = cfg.model.vocab_size if "vocab_size" in cfg.given else 8192
    tok = load_tokenizer(cfg.tokenizer, data_given, vocab)
    if ckpt is None:
        model = build_model(cfg, tok.vocab_size)
    else:  # the checkpoint's model, at the dropout the run now asks for (the merged config's)
        model = resumed_model(ckpt, tok, ckpt_path)
        model.set_dropout(cfg.model.dropout)
    reporter.config(format_config(cfg))  # resolved: vocab_size and shape are known now

    # rank 0 prepares the token files; the others wait, then read the same files
    if dist_info.is_main:
        train_tokens, val_tokens, meta = ensure_prepared(cfg, tok)
    dist_info.barrier()
    if not dist_info.is_main:
        train_tokens, val_tokens, meta = ensure_prepared(cfg, tok)
    data_source = data_record(cfg, meta)
    evals = prepare_evals(cfg, tok, read_sources=dist_info.is_main, device=device)
    data_changes = check_data(saved_data, data_source, cfg, ckpt_path)
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    train_loader, val_loader = construct_data_loaders(
        cfg,
        train_tokens,
        val_tokens,
        padding_id(meta, tok),
        rank=dist_info.rank,
        world_size=dist_info.world_size,
    )
    if t.single_pass:  # one epoch: the data decides the length (and so the LR schedule)
        t.max_steps = train_loader.steps
    step, best_val, history = 0, math.inf, []
    if ckpt is not None:
        # the same optimizer only; given --weight_decay/--beta1/--momentum/... take effect
        saved_optimizer = Config.from_saved(ckpt["config"]).train.optimizer
        restore_optimizer(optimizer, ckpt["optimizer"], saved_optimizer, cfg)
        scaler.load_state_dict(ckpt["scaler"])
        train_loader.load_state_dict(ckpt["data"])
        step, best_val, history = ckpt["step"], ckpt["best_val_loss"], ckpt["metrics"]
    if device.type == "cpu":
        keep_freed_memory()  # the step's large buffers are reused, not faulted in each step
    compile_missing = compile_problem(device) if t.compile else None
    if compile_missing:
        reporter.say(f"warning: {compile_missing}; training without --compile.")
    compiled = t.compile and not compile_missing
    raw_model, wrapped = model, torch.compile(model) if compiled else model
    if dist_info.enabled:
        ids = [dist_info.local_rank] if device.type == "cuda" else None
        wrapped = DistributedDataParallel(wrapped, device_ids=ids)

    tokens_per_step = t.macro_batch_size * cfg.model.T
    reporter.banner(
        params=raw_model.num_params(),
        device=device,
        dtype=dtype_choice,
        processes=dist_info.world_size,
        accum_steps=train_loader.accum,
        tokens_per_step=tokens_per_step,
        train_tokens=len(train_tokens),
        val_tokens=len(val_tokens),
        data_dir=meta.get("directory", ""),
    )
    run = Run(
        cfg=cfg,
        dist=dist_info,
        reporter=reporter,
        device=device,
        dtype=dtype,
        model=wrapped,
        raw_model=raw_model,
        optimizer=optimizer,
        scaler=scaler,
        train_loader=train_loader,
        val_loader=val_loader,
        log=MetricsLog(
            cfg.run.out_dir, history, enabled=dist_info.is_main, tensorboard=t.tensorboard
        ),
        tokenizer={"name": tok.name, "fingerprint": tok.fingerprint()},
        data_source=data_source,
        evals=evals,
        ckpt_path=ckpt_path,
        tokens_per_step=tokens_per_step,
        flops_per_step=raw_model.flops_per_token() * tokens_per_step,
        peak_flops=peak_flops(device, dtype) if dist_info.is_main else None,
        step=step,
        best_val=best_val,
        elapsed_s=ckpt.get("elapsed_s", 0.0) if ckpt is not None else 0.0,
    )
    if data_changes:  # allowed by --allow_data_change: on the record
        run.log.log({"kind": "data_change", "step": step, "from": saved_data, "to": data_source})
        reporter.say(f"note: continuing on changed data ({'; '.join(data_changes)}).")
    if ckpt is not None:  # last, so nothing above can draw from the restored generators
        set_rng_state(ckpt["rng"][dist_info.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])
    return run


def check_layout(saved: dict[str, Any], cfg: Config, path: Path) -> None:
    """Refuse a resume with another `macro_batch_size`: the checkpoint's step count, token
    counts and data position are all counted in its macro batches, and the loader cannot map
    a position onto a different one without skipping or repeating data. (batch_size and the
    number of processes may change: the loader recounts its position at a step's edge.)"""
    old, new = saved.get("macro_batch_size"), cfg.train.macro_batch_size
    if old is not None and old != new:
        raise MyGPT2Error(
            f"cannot resume '{path}' with macro_batch_size {new}: it was trained with {old}, "
            f"and its steps, token counts and data position count macro batches of {old} "
            f"sequences. Resume with --macro_batch_size {old} (or leave the flag out), or "
            "start a new run in another --out_dir."
        )


def build_model(cfg: Config, vocab_size: int) -> GPT:
    """A fresh GPT from the config, or GPT-2 weights when `init_from` names them.

    With `init_from`, the weights fix the shape: a given `--T` shorter than theirs crops the
    context, a given `--dropout` applies, any other given shape key is refused. The config's
    model section is set to the shape built."""
    if "vocab_size" in cfg.given and cfg.model.vocab_size != vocab_size:
        raise MyGPT2Error(
            f"vocab_size {cfg.model.vocab_size} was given, but the tokenizer has {vocab_size} "
            "tokens and the model takes the tokenizer's size. Drop --vocab_size, or train a "
            f"tokenizer of that size (mygpt2 tokenizer train --vocab_size {cfg.model.vocab_size})."
        )
    if cfg.run.init_from == "scratch":
        cfg.model.vocab_size = vocab_size
        return GPT(cfg.model)
    model = from_pretrained(cfg.run.init_from)
    if model.config.vocab_size != vocab_size:
        raise MyGPT2Error(
            f"'{cfg.run.init_from}' has a vocabulary of {model.config.vocab_size} tokens but the "
            f"tokenizer has {vocab_size}. GPT-2 weights need the GPT-2 tokenizer: --use_tiktoken true."
        )
    if "T" in cfg.given and cfg.model.T < model.config.T:
        model.crop_context(cfg.model.T)
    fixed = dataclasses.replace(model.config, dropout=cfg.model.dropout)
    conflicts = [
        f"{k}: weights {getattr(fixed, k)!r}, given {cfg.get(k)!r}"
        for k in ("n_layers", "n_heads", "n_emb", "T", "bias", "pad_vocab", *ARCHITECTURE_KNOBS)
        if k in cfg.given and cfg.get(k) != getattr(fixed, k)
    ]
    if conflicts:
        raise MyGPT2Error(
            f"--init_from {cfg.run.init_from} fixes the model's shape; these given settings "
            f"differ ({'; '.join(conflicts)}). Drop them (T may only shrink the context)."
        )
    cfg.model = fixed
    model.set_dropout(cfg.model.dropout)
    return model
