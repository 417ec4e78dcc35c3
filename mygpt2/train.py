"""Training: one flat loop, on a CPU, one GPU, or many with torchrun.

The loop, read top to bottom in `train()`: set the learning rate, run `accum_steps`
micro-batches (gradients synchronised across processes only on the last one), clip, step,
log; evaluate every `eval_interval` steps; checkpoint every `checkpoint_interval` steps, at
the end, and when the process is asked to stop (SIGINT/SIGTERM).

Design choices:
- `max_steps` counts optimizer (macro) steps; each is `macro_batch_size` sequences over all
  processes, i.e. `accum_steps = macro_batch_size // (batch_size * world_size)` micro-batches.
- Exact resume: the checkpoint carries model, optimizer, scaler, the data loader's position
  and every RNG state, so `--resume` continues bit for bit where the run stopped (tested).
- The learning rate follows the original myGPT2 `_get_cos_lr`: linear warmup over
  `warmup_ratio * max_steps` steps, then cosine decay from `lr` to `min_lr` at `max_steps`.
- A non-finite loss stops the run before the optimizer step, keeping the last good checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from mygpt2.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from mygpt2.config import Config, format_config, merge_saved, shape_changes, wants_gpt2_tokenizer
from mygpt2.data import Construct_data_loaders
from mygpt2.errors import MyGPT2Error
from mygpt2.hf import from_pretrained
from mygpt2.metrics import MetricsLog
from mygpt2.model import GPT
from mygpt2.optim import get_lr, make_optimizer, set_hyperparameters
from mygpt2.prepare import ensure_prepared
from mygpt2.runtime import (
    Distributed,
    StopRequest,
    autocast,
    peak_flops,
    pick_device,
    pick_dtype,
    print0,
)
from mygpt2.tokenizer import load_tokenizer


def accum_steps_for(cfg: Config, world_size: int) -> int:
    """Micro-batches per optimizer step on each process; an error if the sizes do not divide."""
    t = cfg.train
    per_pass = t.batch_size * world_size
    if t.macro_batch_size % per_pass != 0:
        raise MyGPT2Error(
            f"macro_batch_size ({t.macro_batch_size}) must be a multiple of batch_size "
            f"({t.batch_size}) x processes ({world_size}) = {per_pass}. For example use "
            f"--macro_batch_size {max(per_pass, t.macro_batch_size // per_pass * per_pass)}."
        )
    return t.macro_batch_size // per_pass


def build_model(cfg: Config, vocab_size: int) -> GPT:
    """A fresh GPT from the config, or GPT-2 weights when `init_from` names them.

    With `init_from`, the weights fix the shape: a given `--T` shorter than theirs crops the
    context, a given `--dropout` applies, any other given shape key is refused."""
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
        for k in ("n_layers", "n_heads", "n_emb", "T", "bias", "pad_vocab")
        if k in cfg.given and cfg.get(k) != getattr(fixed, k)
    ]
    if conflicts:
        raise MyGPT2Error(
            f"--init_from {cfg.run.init_from} fixes the model's shape; these given settings "
            f"differ ({'; '.join(conflicts)}). Drop them (T may only shrink the context)."
        )
    cfg.model = fixed
    model.config.dropout = cfg.model.dropout
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = cfg.model.dropout
        if hasattr(m, "dropout") and isinstance(m.dropout, float):
            m.dropout = cfg.model.dropout
    return model


def resume_config(ckpt: dict[str, Any], cfg: Config, path: Path) -> Config:
    """The checkpoint's config with the given keys on top; a given change of shape is refused."""
    saved = Config.from_saved(ckpt["config"])
    merged = merge_saved(saved, cfg)
    diff = shape_changes(saved.model, merged.model)
    if diff:
        raise MyGPT2Error(
            f"cannot resume from '{path}': the model's shape would change ({'; '.join(diff)}). "
            "Drop those flags to continue the run, or start a new run in another --out_dir."
        )
    return merged


def train(cfg: Config) -> dict[str, Any]:
    """Train a GPT as `cfg` says; returns a summary (final losses, steps, paths)."""
    dist_info = Distributed.from_env(cfg.run.device)
    try:
        return _train(cfg, dist_info)
    finally:
        dist_info.close()


def _train(cfg: Config, dist_info: Distributed) -> dict[str, Any]:
    ckpt = None
    if cfg.train.resume:
        # the checkpoint's config, with what this command line sets on top
        ckpt_path = Path(cfg.run.out_dir) / "checkpoint.pt"
        ckpt = load_checkpoint(ckpt_path)
        cfg = resume_config(ckpt, cfg, ckpt_path)
    t = cfg.train
    device = pick_device(cfg.run.device, dist_info.local_rank)
    dtype = pick_dtype(cfg.run.dtype, device)
    accum_steps = accum_steps_for(cfg, dist_info.world_size)
    out_dir = Path(cfg.run.out_dir)
    ckpt_path = out_dir / "checkpoint.pt"
    if wants_gpt2_tokenizer(cfg):
        cfg.tokenizer.use_tiktoken = True
    # absolute paths, so the checkpoint finds its tokenizer from any working directory
    for name in ("tokenizer_path", "tiktoken_file"):
        value = getattr(cfg.tokenizer, name)
        if value and Path(value).exists():
            setattr(cfg.tokenizer, name, str(Path(value).resolve()))
    torch.manual_seed(cfg.run.seed + dist_info.rank)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # --- tokenizer and model
    tok = load_tokenizer(cfg.tokenizer)
    if ckpt is not None:
        saved_tok = ckpt.get("tokenizer", {}).get("fingerprint")
        if saved_tok and saved_tok != tok.fingerprint():
            raise MyGPT2Error(
                f"cannot resume from '{ckpt_path}': it was trained with tokenizer "
                f"{ckpt['tokenizer'].get('name')}, but this run uses {tok.name}."
            )
        model = GPT(cfg.model)
        model.load_state_dict(ckpt["model"])
    else:
        model = build_model(cfg, tok.vocab_size)

    print0(dist_info, format_config(cfg))  # resolved: vocab_size and shape are known now

    # --- data (rank 0 prepares; the others wait, then read the same files)
    if dist_info.is_main:
        train_tokens, val_tokens, _ = ensure_prepared(cfg, tok)
    dist_info.barrier()
    if not dist_info.is_main:
        train_tokens, val_tokens, _ = ensure_prepared(cfg, tok)
    pad_id = tok.encode_ordinary("\n")[0]
    model.to(device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=(dtype == torch.float16))
    train_loader, val_loader = Construct_data_loaders(
        cfg, train_tokens, val_tokens, pad_id, rank=dist_info.rank, world_size=dist_info.world_size
    )
    if cfg.train.single_pass:  # one epoch: the data decides the length (and so the LR schedule)
        t.max_steps = train_loader.steps
    start_step, best_val, history = 0, float("inf"), []
    if ckpt is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
        set_hyperparameters(optimizer, cfg)  # given --weight_decay/--beta1/--beta2 take effect
        scaler.load_state_dict(ckpt["scaler"])
        train_loader.load_state_dict(ckpt["data"])
        start_step = ckpt["step"]
        best_val = ckpt["best_val_loss"]
        history = ckpt["metrics"]
    raw_model = model
    if t.compile:
        model = torch.compile(model)
    if dist_info.enabled:
        model = DistributedDataParallel(
            model, device_ids=[dist_info.local_rank] if device.type == "cuda" else None
        )

    # --- what the user sees at the start
    tokens_per_step = t.macro_batch_size * cfg.model.T
    flops_per_step = raw_model.flops_per_token() * tokens_per_step
    peak = peak_flops(device, dtype) if dist_info.is_main else None
    print0(
        dist_info,
        f"\nmodel: {raw_model.num_params() / 1e6:.2f}M parameters | device {device} | "
        f"dtype {str(dtype).removeprefix('torch.')} | processes {dist_info.world_size} | "
        f"accum_steps {accum_steps} | {tokens_per_step:,} tokens/step | "
        f"data {len(train_tokens):,} train + {len(val_tokens):,} val tokens\n",
    )
    log = MetricsLog(out_dir, history, enabled=dist_info.is_main, tensorboard=t.tensorboard)

    def evaluate() -> float:
        model.eval()
        total, count = torch.zeros((), device=device), 0
        with torch.no_grad():
            for i, (x, y) in enumerate(val_loader):
                if i >= t.eval_batches:
                    break
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                with autocast(device, dtype):
                    _, loss = model(x, y)
                total += loss.float()
                count += 1
        if dist_info.enabled:
            dist.all_reduce(total, op=dist.ReduceOp.AVG)
        model.train()
        return total.item() / max(count, 1)

    def checkpoint(step: int) -> None:
        rngs = rng_state()
        if dist_info.enabled:  # every rank's RNG, so dropout resumes exactly on each
            gathered = [None] * dist_info.world_size
            dist.all_gather_object(gathered, rngs)
            rngs = gathered
        if not dist_info.is_main:
            return
        save_checkpoint(
            ckpt_path,
            {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "config": cfg.to_dict(),
                "step": step,
                "data": train_loader.state_dict(),
                "rng": rngs,
                "tokenizer": {"name": tok.name, "fingerprint": tok.fingerprint()},
                "best_val_loss": best_val,
                "metrics": log.history,
            },
        )

    if ckpt is not None:  # last, so nothing above can draw from the restored generators
        set_rng_state(ckpt["rng"][dist_info.rank] if isinstance(ckpt["rng"], list) else ckpt["rng"])

    # --- the loop
    end_step = min(t.max_steps, t.stop_at) if t.stop_at else t.max_steps
    model.train()
    train_iter = iter(train_loader)
    bar = tqdm(
        total=t.max_steps,
        initial=start_step,
        disable=not dist_info.is_main,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    step, val_loss, loss_value = start_step, None, float("nan")
    with StopRequest() as stop:
        while step < end_step:
            t0 = time.perf_counter()
            lr = get_lr(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            for micro in range(accum_steps):
                x, y = next(train_iter)
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                last = micro == accum_steps - 1
                # under DDP, all-reduce the gradients only on the last micro-step
                sync = model.no_sync() if dist_info.enabled and not last else nullcontext()
                with sync:
                    with autocast(device, dtype):
                        _, loss = model(x, y, return_logits=False)
                    loss = loss / accum_steps
                    scaler.scale(loss).backward()
                loss_sum += loss.detach()
            if dist_info.enabled:
                dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
            loss_value = loss_sum.item()
            if not math.isfinite(loss_value):
                raise MyGPT2Error(
                    f"the loss became {loss_value} at step {step + 1}; stopped before updating the "
                    f"weights. The last good checkpoint (if any) is in '{ckpt_path}'. Try a lower "
                    "--lr, --grad_clipping 1.0, or --dtype float32."
                )
            grad_norm = None
            if t.grad_clipping > 0:
                scaler.unscale_(optimizer)
                grad_norm = torch.nn.utils.clip_grad_norm_(
                    raw_model.parameters(), t.grad_clipping
                ).item()
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            dt = time.perf_counter() - t0
            tok_per_s = tokens_per_step / dt
            row = {
                "kind": "train",
                "step": step,
                "loss": loss_value,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": step * tokens_per_step,
                "tokens_per_s": tok_per_s,
            }
            mfu = flops_per_step / dt / (peak * dist_info.world_size) if peak else None
            if mfu is not None:
                row["mfu"] = mfu
            log.log(row)
            postfix = {"loss": f"{loss_value:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_per_s:,.0f}"}
            if grad_norm is not None:
                postfix["gnorm"] = f"{grad_norm:.2f}"
            if mfu is not None:
                postfix["mfu"] = f"{mfu:.0%}"
            if val_loss is not None:
                postfix["val"] = f"{val_loss:.4f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)

            if step % t.eval_interval == 0 or step == t.max_steps:
                val_loss = evaluate()
                best_val = min(best_val, val_loss)
                log.log(
                    {
                        "kind": "eval",
                        "step": step,
                        "val_loss": val_loss,
                        "best_val_loss": best_val,
                        "tokens": step * tokens_per_step,
                    }
                )
                log.plot(tokens_per_step)
            stopping = stop.requested
            if dist_info.enabled:  # every rank must agree, or the collectives would hang
                flag = torch.tensor(int(stopping), device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)
                stopping = bool(flag.item())
            periodic = t.checkpoint_interval and step % t.checkpoint_interval == 0
            if periodic or stopping or step == end_step:
                checkpoint(step)
            if stopping:
                bar.close()
                print0(
                    dist_info,
                    f"\nstopped at step {step}; resume with --resume "
                    f"(checkpoint in '{ckpt_path}').",
                )
                break
    bar.close()
    log.close()
    if dist_info.is_main and step == t.max_steps:
        print(
            f"\ndone: {step} steps, final train loss {loss_value:.4f}, "
            f"best val loss {best_val:.4f}; outputs in '{out_dir}'.",
            flush=True,
        )
    return {
        "step": step,
        "train_loss": loss_value,
        "val_loss": val_loss,
        "best_val_loss": best_val,
        "checkpoint": str(ckpt_path),
        "history": log.history,
    }
