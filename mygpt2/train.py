"""Training: one flat loop, on a CPU, one GPU, or many with torchrun.

`train()` reads top to bottom in one screen: set the learning rate, take one optimizer step's
micro-batches, `train_step`, report; `evaluate` every `eval_interval` steps; `save` at every
evaluation, every `checkpoint_interval` steps, at least every `checkpoint_minutes`, at the end,
and when the process is asked to stop (SIGINT/SIGTERM). Everything the loop carries between
steps is one `Run`, built (or resumed) by `setup`. The run's safety frame (out_dir's lock, no
silent overwrite, signals, the resume line, the data a checkpoint was trained on) is
`mygpt2.guard`'s.

Design choices:
- `max_steps` counts optimizer (macro) steps; each is `macro_batch_size` sequences over all
  processes. How many micro-batches that is on each process is the data loader's arithmetic
  (`TrainLoader.accum`), checked in `mygpt2.data` alone.
- The loss is a mean over *tokens*, not over micro-batches: before the micro-steps of a step,
  the valid targets (not -100, i.e. not padding) of all its micro-batches are counted and
  summed over processes; each micro-batch then backpropagates its summed loss divided by that
  count (times the number of processes, since DDP averages gradients). So accumulation and
  DDP give the gradients of one big batch, short padded blocks included. Evaluation likewise
  sums losses and counts over batches and processes and reports sum / count.
- Exact resume: the checkpoint carries model, optimizer, scaler, the data loader's position
  and every RNG state, so `--resume` continues bit for bit where the run stopped (tested).
  `setup` restores the RNG states last, so none of its own work draws from them.
- `--resume` takes the checkpoint's config with the flags given now on top
  (`checkpoint.resume_config`);
  given optimizer hyperparameters are put into the restored optimizer.
- A non-finite loss stops the run before the optimizer step (a `RunError`, exit 1), keeping
  the last good checkpoint. A crash in the run's own tools after a step (reporting,
  evaluation, plotting, health, snapshots) saves that step's checkpoint first, then stops
  with one line and the resume line (`fail`; `guard.ToolFailure`).
- Time to a target, as speedruns count it: train and eval rows carry `elapsed_s`, the seconds
  spent in training steps since the run began (no data preparation, evaluation or saving;
  carried across `--resume`). `target_val_loss` ends the run at the first evaluation at or
  below it, checkpointed.
- The loop does not print: messages and the progress bar go through `metrics.Reporter`,
  enabled on rank 0 only. The caller's `cfg` is not changed; the resolved one is `Run.cfg`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from mygpt2.checkpoint import rng_state, save_checkpoint
from mygpt2.config import Config
from mygpt2.dynamics.health import HealthProbe
from mygpt2.dynamics.series import SnapshotWriter, snapshot_due
from mygpt2.errors import MyGPT2Error, RunError
from mygpt2.evaluation.during_training import score_extras, validation_bpb
from mygpt2.evaluation.text import batches_nll
from mygpt2.guard import (
    CheckpointClock,
    StopSignals,
    ToolFailure,
    guarded,
    resume_command,
    run_command,
    tool_failure,
)
from mygpt2.loss import IGNORE_INDEX
from mygpt2.metrics import Reporter
from mygpt2.model import GPT
from mygpt2.optim import get_lr
from mygpt2.run_setup import Run, setup
from mygpt2.runtime import Distributed, all_gather_object, all_reduce, autocast

# ----------------------------------------------------------------------------- the loop


def train(
    cfg: Config, argv: list[str] | None = None, program: str = "mygpt2 train"
) -> dict[str, Any]:
    """Train a GPT as `cfg` says; returns a summary (final losses, steps, paths, and `signal`:
    the SIGINT/SIGTERM that stopped it, or 0). `argv` and `program` (the command line's flags
    and how it was started) make the resume line; without them it is a plain --resume."""
    dist_info = Distributed.from_env(cfg.run.device)
    reporter = Reporter(enabled=dist_info.is_main)
    run: Run | None = None
    try:
        command = run_command(argv, program)  # for the lock file; never from sys.argv
        with guarded(cfg, dist_info.is_main, reporter.say, command) as signals:
            run = setup(cfg, dist_info, reporter)
            t, first = run.cfg.train, run.step
            batches = iter(run.train_loader)
            clock = CheckpointClock(t.checkpoint_minutes)
            if run.step < run.end_step:
                reporter.start(total=t.max_steps, initial=run.step)
            signals.deferred = True  # from here on a signal lets the step finish and save
            failure: ToolFailure | None = None  # a crash in the run's own tools (see `fail`)
            while run.step < run.end_step:
                t0 = time.perf_counter()
                lr = get_lr(run.step, run.cfg)
                micro = [next(batches) for _ in range(run.train_loader.accum)]
                result = step_run(run, micro, lr)
                run.step += 1
                seconds = time.perf_counter() - t0
                run.elapsed_s += seconds  # training time only: no evaluation, no saving
                evaluated = run.step % t.eval_interval == 0 or run.step == t.max_steps
                stage = "reporting the step"
                try:  # the run's own tools: a crash in them must not lose the step just taken
                    report_step(run, result, lr, seconds)
                    if result.health_error is not None:
                        stage = "the health statistics"
                        raise result.health_error
                    if evaluated:
                        stage = "the evaluation"
                        evaluate_run(run)
                        goal = t.target_val_loss  # 0: none
                        run.reached_target = goal > 0 and run.val_loss <= goal
                except Exception as e:
                    failure = failure or ToolFailure(stage, run.step, e)
                run.signal, late, failed = stop_requested(signals, clock, run, failure is not None)
                periodic = t.checkpoint_interval and run.step % t.checkpoint_interval == 0
                saved = evaluated or periodic or late or run.signal or run.step == run.end_step
                if failed:
                    fail(run, failure, argv, program)  # saves this step, then stops
                if saved:
                    save(run)
                    clock.reset()
                try:
                    keep_snapshot(run, evaluated, bool(saved))
                except Exception as e:  # rank 0 alone: the next agreement stops every process
                    failure = ToolFailure("keeping a snapshot", run.step, e)
                if run.signal or run.reached_target:
                    break
            # the last step's snapshot may have failed (on rank 0): every process must know
            if stop_requested(signals, clock, run, failure is not None)[2]:
                fail(run, failure, argv, program)
            return finish(run, run.step > first, argv, program)
    finally:
        if run is not None:  # after any error too: TensorBoard's buffered events reach the disk
            run.log.close()
        reporter.close()
        dist_info.close()


def fail(run: Run, failure: ToolFailure | None, argv: list[str] | None, program: str) -> None:
    """Stop the run after a crash in its own tools (evaluation, reporting, plotting, health,
    snapshots) on any process: save the step, then a `RunError` (exit 1) saying what failed,
    the step saved (or why it could not be) and the resume line. (`failure` is None on the
    processes where nothing failed.)"""
    save_error = None
    try:
        save(run)
    except MyGPT2Error as e:  # a full disk, say: the last good checkpoint stays as it was
        save_error = e
    run.log.close()
    resume = resume_command(run.cfg, argv, program)
    raise RunError(tool_failure(failure, run.step, run.ckpt_path, resume, save_error))


def finish(run: Run, ran: bool, argv: list[str] | None, program: str) -> dict[str, Any]:
    """Say how the run ended and how to go on (the resume line); return the summary, whose
    `signal` is the SIGINT/SIGTERM that cut the run short (0 when it did all it was asked)."""
    t, out_dir = run.cfg.train, Path(run.cfg.run.out_dir)
    if run.step >= run.end_step or run.reached_target:
        run.signal = 0
    run.reporter.close()
    run.log.close()
    if run.step >= t.max_steps and not ran:  # resumed a finished run: say how to extend it
        extend = resume_command(run.cfg, argv, program, max_steps=2 * run.step)
        run.reporter.nothing_to_do(run.step, t.max_steps, out_dir, extend)
    elif not ran and t.stop_at and run.step >= t.stop_at:  # resumed with a --stop_at behind it
        run.reporter.say(
            f"--stop_at {t.stop_at} is not past the checkpoint's step {run.step} (of "
            f"{t.max_steps}): nothing trained. Resume with a later --stop_at, or without one: "
            f"{resume_command(run.cfg, argv, program)}"
        )
    elif run.reached_target:
        run.reporter.say(
            f"\nreached target_val_loss {t.target_val_loss}: val loss {run.val_loss:.4f} at step "
            f"{run.step} of {t.max_steps}, after {run.elapsed_s:.1f} s of training; outputs "
            f"in '{out_dir}'."
        )
    elif run.step == t.max_steps:
        run.reporter.done(run.step, run.train_loss, run.best_val, out_dir)
    else:  # a signal or --stop_at: the checkpoint is saved
        run.reporter.stopped(run.step, t.max_steps, resume_command(run.cfg, argv, program))
    return {
        "step": run.step,
        "max_steps": t.max_steps,
        "signal": run.signal,
        "train_loss": run.train_loss,
        "val_loss": run.val_loss,
        "best_val_loss": run.best_val,
        "reached_target": run.reached_target,
        "elapsed_s": run.elapsed_s,
        "checkpoint": str(run.ckpt_path),
        "history": run.log.history,
    }


# ----------------------------------------------------------------------------- one step


@dataclass
class StepResult:
    """What one optimizer step measured, over all processes."""

    loss: float  # mean loss per valid target of the step's micro-batches
    grad_norm: float | None  # total gradient norm before clipping (None: not clipped)
    tokens: int  # valid targets (not -100) in the step
    health: dict[str, Any] | None = None  # a HealthProbe's row, on health steps only
    health_error: Exception | None = None  # what broke the row after the step (then None)


class NonFiniteLossError(RunError):
    """A step's loss was NaN or infinite; the weights were left as they were."""

    def __init__(self, loss: float) -> None:
        super().__init__(f"the loss became {loss}; stopped before updating the weights.")
        self.loss = loss


def _ddp_world(model: torch.nn.Module) -> int:
    # a DDP-wrapped model is the sign that the step spans processes
    return dist.get_world_size() if isinstance(model, DistributedDataParallel) else 1


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    lr: float | None = None,
    scaler: torch.amp.GradScaler | None = None,
    dtype: torch.dtype = torch.float32,
    grad_clipping: float = 0.0,
    health: HealthProbe | None = None,
) -> StepResult:
    """One optimizer step over this process's micro-batches `batches` [(x, y), ...].

    The gradients are those of the mean loss over every valid target of the step (all
    micro-batches, all processes when `model` is wrapped in DDP), however the targets are
    spread: each micro-batch's summed loss is divided by the step's global count. Gradients
    are synchronised across processes on the last micro-batch only. With `scaler`, the loss
    is scaled and the gradients unscaled before clipping to `grad_clipping` (0: no clipping),
    so the reported norm is the true one. A non-finite loss raises `NonFiniteLossError` before
    the optimizer step. `lr`, when given, is set on every parameter group first (times the
    group's `lr_scale`, where it has one). A `health` probe watches the last micro-batch's
    forward, the gradients before clipping and the update; an exception in its statistics
    after the optimizer step comes back as `health_error` instead of being raised, since the
    step itself is done.
    """
    world = _ddp_world(model)
    device = next(model.parameters()).device
    if lr is not None:
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)  # Muon's groups: muon_lr / lr
    # counted before any forward pass: every micro-batch's share of the step depends on it
    count = torch.stack([(y != IGNORE_INDEX).sum() for _, y in batches]).sum().to(device)
    if world > 1:
        all_reduce(count, device)
    # DDP averages gradients over processes: each one's sum counts `world` times to undo that
    weight = world / count.clamp(min=1).to(torch.float32)
    loss_sum = torch.zeros((), device=device)
    for i, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        last = i == len(batches) - 1
        sync = model.no_sync() if world > 1 and not last else nullcontext()
        watch = health.watching() if health is not None and last else nullcontext()
        with sync, watch:
            with autocast(device, dtype):
                _, loss = model(x, y, return_logits=False, reduction="sum")
            scaled = loss * weight
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        loss_sum += loss.detach().float()
    if world > 1:
        all_reduce(loss_sum, device)
    loss_value = (loss_sum / count.clamp(min=1)).item()
    if not math.isfinite(loss_value):  # every process sees the same value: all stop together
        raise NonFiniteLossError(loss_value)
    if health is not None:  # gradients before clipping, true scale; weights before the step
        scaled_by = scaler.get_scale() if scaler is not None and scaler.is_enabled() else 1.0
        health.before_update(scaled_by)
    grad_norm = None
    if grad_clipping > 0:
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip (and report) the true gradients, not scaled ones
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clipping).item()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    row, health_error = None, None
    if health is not None:
        try:  # the step is done: a fault in the statistics must not hide it
            health.after_update()
            row = health.row()
        except Exception as e:
            health_error = e
    return StepResult(
        loss=loss_value,
        grad_norm=grad_norm,
        tokens=int(count.item()),
        health=row,
        health_error=health_error,
    )


def evaluate(model: GPT, batches: Any, *, dtype: torch.dtype = torch.float32) -> float:
    """Mean loss per valid target over `batches` of (x, y) (`evaluation.batches_nll`), over
    all processes under DDP. `model` is the raw GPT, not a DDP or compiled one."""
    nats, count = batches_nll(model, batches, dtype)
    device = next(model.parameters()).device  # the run's: the collectives check against it
    all_reduce(nats, device)
    all_reduce(count, device)
    return (nats / count.clamp(min=1)).item()


# ----------------------------------------------------------------------------- the run


def step_run(run: Run, batches: list[tuple[torch.Tensor, torch.Tensor]], lr: float) -> StepResult:
    """`train_step` with the run's settings; a non-finite loss names the step and checkpoint."""
    try:
        result = train_step(
            run.model,
            run.optimizer,
            batches,
            lr=lr,
            scaler=run.scaler,
            dtype=run.dtype,
            grad_clipping=run.cfg.train.grad_clipping,
            health=health_probe(run),
        )
    except NonFiniteLossError as e:
        tries = ["a lower --lr"]
        if run.dtype != torch.float32:
            tries.append("--dtype float32")
        if run.cfg.train.grad_clipping <= 0:
            tries.append("--grad_clipping 1.0")
        raise RunError(
            f"the loss became {e.loss} at step {run.step + 1}; stopped before updating the "
            f"weights. The last good checkpoint (if any) is in '{run.ckpt_path}'. Try "
            f"{' or '.join(tries)}."
        ) from None
    run.train_loss = result.loss
    return result


def health_probe(run: Run) -> HealthProbe | None:
    """A probe when the coming step is a health step (rank 0 alone records it), else None."""
    every = run.cfg.train.health_interval
    if every and (run.step + 1) % every == 0 and run.dist.is_main:
        return HealthProbe(run.raw_model)
    return None


def report_step(run: Run, result: StepResult, lr: float, seconds: float) -> None:
    """One train row into the metrics log, and onto the progress bar."""
    tok_per_s = run.tokens_per_step / seconds
    row = {
        "kind": "train",
        "step": run.step,
        "loss": result.loss,
        "lr": lr,
        "grad_norm": result.grad_norm,
        "tokens": run.step * run.tokens_per_step,
        "tokens_per_s": tok_per_s,
        "elapsed_s": run.elapsed_s,
    }
    if run.peak_flops:
        row["mfu"] = run.flops_per_step / seconds / (run.peak_flops * run.dist.world_size)
    run.log.log(row)
    if result.health is not None:
        run.log.log({"kind": "health", "step": run.step, "tokens": row["tokens"], **result.health})
    run.reporter.step(row, run.val_loss)


def evaluate_run(run: Run) -> None:
    """Validation loss now: remembered, logged, plotted; the best so far kept."""
    run.val_loss = evaluate(run.raw_model, run.val_loader, dtype=run.dtype)
    run.best_val = min(run.best_val, run.val_loss)
    row = {
        "kind": "eval",
        "step": run.step,
        "val_loss": run.val_loss,
        "best_val_loss": run.best_val,
        "val_bpb": validation_bpb(
            run.evals, run.val_loader, run.val_loss, distributed=run.dist.enabled
        ),
        "tokens": run.step * run.tokens_per_step,
        "elapsed_s": run.elapsed_s,  # wall-clock seconds of training steps (time to target)
    }
    if run.dist.is_main:  # eval_data and eval_tasks: rank 0 alone, on the raw model
        row |= score_extras(run.evals, run.raw_model, run.dtype)
    run.log.log(row)
    run.log.plot(run.tokens_per_step)


def stop_requested(
    signals: StopSignals, clock: CheckpointClock, run: Run, failed: bool = False
) -> tuple[int, bool, bool]:
    """The signal any process was stopped by during this step (0: none), whether the
    checkpoint is due by time, and whether a tool failed on any process (`failed`: on this
    one); all processes agree (one all-reduce), or collectives would hang."""
    flags = [signals.signum, int(clock.due()), int(failed)]
    if run.dist.enabled:
        agreed = torch.tensor(flags, device=run.device)
        flags = all_reduce(agreed, run.device, "max").tolist()
    return int(flags[0]), bool(flags[1]), bool(flags[2])


def save(run: Run) -> None:
    """Checkpoint everything an exact resume needs (rank 0 writes; all ranks give their RNG)."""
    rngs: Any = rng_state()
    if run.dist.enabled:  # every rank's RNG, so dropout resumes exactly on each
        rngs = all_gather_object(rngs)
    if not run.dist.is_main:
        return
    save_checkpoint(
        run.ckpt_path,
        {
            "model": run.raw_model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            "config": run.cfg.to_dict(),
            "step": run.step,
            "data": run.train_loader.state_dict(),
            "rng": rngs,
            "tokenizer": run.tokenizer,
            "data_source": run.data_source,
            "best_val_loss": run.best_val,
            "elapsed_s": run.elapsed_s,
            "metrics": run.log.history,
        },
    )


def keep_snapshot(run: Run, evaluated: bool, saved: bool) -> None:
    """A weights-only snapshot into out_dir/checkpoints when `keep_checkpoints` asks for one
    at this step (rank 0; a failure is warned of once and the run goes on)."""
    if not run.dist.is_main or not snapshot_due(
        run.cfg.train.keep_checkpoints, run.step, evaluated, saved
    ):
        return
    if run.snapshots is None:  # a new run replaces an earlier run's series
        fresh = not run.cfg.train.resume
        run.snapshots = SnapshotWriter(run.cfg.run.out_dir, fresh, run.reporter.say)
    info = {
        "tokens": run.step * run.tokens_per_step,
        "val_loss": run.val_loss if evaluated else None,
        "train_loss": run.train_loss,
        "config": run.cfg.to_dict(),
        "tokenizer": run.tokenizer,
    }
    run.snapshots.write(run.raw_model, run.step, info)
