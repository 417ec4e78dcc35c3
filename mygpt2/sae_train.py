"""`mygpt2 sae train`: a sparse autoencoder trained on one hook point of a model, as a run.

The run directory is the SAE directory (`--sae_dir`): `cfg.json` and `sae_weights.safetensors`
(SAELens's format, loadable at every checkpoint), `checkpoint.pt` (the SAE, Adam's state, the
RNG state, the stream position, the dead-feature counters, the metrics history),
`metrics.jsonl`, `loss_plot.png` and, while it runs, `.lock`.

Training, per step, on a batch of activation rows x (`mygpt2.sae.stream`: streamed from the
model, shuffled across many windows, never dumped to disk):
- loss = mean_rows ||x - x_hat||^2, plus for `standard` l1_coefficient * mean_rows
  sum_i f_i ||W_dec[i]|| (the L1 penalty; with unit decoder rows, the plain L1 of f).
- Dead features are handled by an auxiliary loss, Gao et al.'s AuxK (2024), in both
  architectures: a feature is dead when it has not fired on the last `dead_window` tokens;
  the k_aux = d_in / 2 largest pre-activations among dead features (taken as they are, as
  SAELens does, so a negative pre-activation still gets a gradient) reconstruct the residual
  e = x - x_hat (detached, no bias), and aux_coefficient * mean_rows ||e - e_hat||^2 is added
  (coefficient 1/32 as in the paper, scaled by min(dead / k_aux, 1) as SAELens does). No
  resampling: the optimizer state is never edited.
- Decoder rows stay at unit norm: the gradient's component along each row is removed before
  the step, and the rows are renormalised after it. b_dec starts at the mean of the first
  batch (Gao et al. use the geometric median), W_enc at W_dec's transpose.
- Adam at a constant learning rate.
- Speed, with the same arithmetic: TopK decodes with `F.embedding_bag` over the k chosen rows
  of W_dec (forward and backward touch only those rows), and the encoder's b_dec is folded
  into its bias (`_pre_acts`), which saves one (batch, d_sae) x d_in product per step; Adam is
  the fused one where the device has it.

A run like training (`mygpt2.guard`'s pieces): one writer (the directory's lock), no silent
overwrite, checkpoints every `checkpoint_every` steps and at the end, SIGINT/SIGTERM save and
stop (exit 130/143) with the line that resumes, and `--resume` equals an uninterrupted run bit
for bit: the stream's position is two integers and its blocks are recomputed (see
`mygpt2.sae.stream`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional as F
from tqdm import tqdm

from mygpt2.checkpoint import rng_state, set_rng_state
from mygpt2.errors import MyGPT2Error
from mygpt2.fileio import atomic_write, load_torch_file
from mygpt2.guard import StopSignals, data_identity
from mygpt2.lock import DirectoryLock
from mygpt2.metrics import MetricsLog
from mygpt2.optim import without_dynamo
from mygpt2.sae import files
from mygpt2.sae.measure import batch_stats
from mygpt2.sae.model import SAE, TRAINABLE, SAEConfig
from mygpt2.sae.splice import check_hook_name, hook_width
from mygpt2.sae.stream import ActivationStream, TokenWindows

RUN_FILES = ("checkpoint.pt", "metrics.jsonl", "loss_plot.png", files.CFG_FILENAME)
RUN_FILES += (files.WEIGHTS_FILENAME,)
# settings a resumed run may change; the others describe the SAE and its data
RESUMABLE = ("tokens", "checkpoint_every")


@dataclass
class Settings:
    """What `mygpt2 sae train` trains: the SAE's shape and the run's figures."""

    hook: str
    d_sae: int
    architecture: str = "topk"
    k: int = 32
    l1_coefficient: float = 1.0
    tokens: int = 1_000_000
    batch_size: int = 4096
    lr: float = 1e-3
    seed: int = 1337
    context: int = 0  # 0: the model's T
    model_batch: int = 8
    buffer_tokens: int = 32768
    dead_window: int = 100_000
    aux_coefficient: float = 1 / 32
    checkpoint_every: int = 500

    def check(self) -> None:
        """Refuse out-of-range values with one line each."""
        if self.architecture not in TRAINABLE:
            raise MyGPT2Error(
                f"--architecture must be {' or '.join(TRAINABLE)}, got {self.architecture!r}."
            )
        positive = ("d_sae", "tokens", "batch_size", "model_batch", "buffer_tokens")
        positive += ("dead_window", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise MyGPT2Error(f"--{name} must be at least 1, got {getattr(self, name)}.")
        if self.architecture == "topk" and not 1 <= self.k <= self.d_sae:
            raise MyGPT2Error(
                f"--k must be from 1 to --d_sae {self.d_sae} (features kept per token), got "
                f"{self.k}."
            )
        for name in ("lr", "l1_coefficient", "aux_coefficient"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0) or (name == "lr" and value == 0):
                raise MyGPT2Error(f"--{name} must be a finite positive number, got {value}.")
        if self.context < 0:
            raise MyGPT2Error(f"--context must be 0 (the model's T) or more, got {self.context}.")


def sae_config(s: Settings, d_in: int, model_name: str, context: int) -> SAEConfig:
    """The SAE a run trains, with the run's settings in its metadata."""
    hook_z = s.hook.endswith("attn.hook_z")
    return SAEConfig(
        d_in=d_in,
        d_sae=s.d_sae,
        architecture=s.architecture,
        k=s.k,
        l1_coefficient=s.l1_coefficient,
        hook_name=s.hook,
        model_name=model_name,
        context_size=context,
        reshape_activations="hook_z" if hook_z else "none",
        metadata={"training_architecture": s.architecture, "mygpt2_settings": asdict(s)},
    )


def _sparse_decode(sae: SAE, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """sum_j values[:, j] * W_dec[indices[:, j]] (no bias): a decode that reads only the chosen
    rows of W_dec, forward and backward, instead of a dense (B, d_sae) @ W_dec."""
    return F.embedding_bag(indices, sae.W_dec, per_sample_weights=values, mode="sum")


def _pre_acts(sae: SAE, x: torch.Tensor) -> torch.Tensor:
    """`sae.pre_acts(x)` for training: (x - b_dec) @ W_enc + b_enc computed as
    x @ W_enc + (b_enc - b_dec @ W_enc), so that b_dec's gradient through the encoder is a
    vector product instead of a (batch, d_sae) @ W_enc.T matrix product."""
    if not sae.cfg.apply_b_dec_to_input or sae.cfg.rescale_acts_by_decoder_norm:
        return sae.pre_acts(x)
    return torch.addmm(sae.b_enc - sae.b_dec @ sae.W_enc, x, sae.W_enc)


def losses(sae: SAE, x: torch.Tensor, since: torch.Tensor, s: Settings) -> dict[str, torch.Tensor]:
    """One step's losses on rows x (see the module docstring), with what the step reports:
    `active` (non-zero features per row, mean) and `fired` ((d_sae,) bool)."""
    pre = _pre_acts(sae, x)
    if s.architecture == "topk" and not sae.cfg.rescale_acts_by_decoder_norm:
        values, indices = pre.topk(s.k, dim=-1, sorted=False)
        values = values.relu()
        x_hat = _sparse_decode(sae, values, indices) + sae.b_dec
        on = values.detach() != 0
        fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[on]] = True
    else:
        f = sae.activate(pre)
        x_hat = sae.decode(f)
        on = f.detach() != 0
        fired = on.any(0)
    err = x - x_hat
    recon = err.pow(2).sum(-1).mean()
    out = {"recon": recon, "x_hat": x_hat, "fired": fired, "active": on.sum(-1).float().mean()}
    total = recon
    if s.architecture == "standard":
        out["l1"] = (f * sae.W_dec.norm(dim=1)).sum(-1).mean()
        total = total + s.l1_coefficient * out["l1"]
    dead = since >= s.dead_window
    n_dead = int(dead.sum())
    aux = x.new_zeros(())
    if n_dead:
        k_aux = max(1, sae.cfg.d_in // 2)
        scale = min(n_dead / k_aux, 1.0)
        k_aux = min(k_aux, n_dead)
        masked = pre.masked_fill(~dead, -math.inf)
        values, indices = masked.topk(k_aux, dim=-1, sorted=False)
        e_hat = _sparse_decode(sae, values, indices)
        aux = scale * (e_hat - err.detach()).pow(2).sum(-1).mean()
        total = total + s.aux_coefficient * aux
    out["aux"], out["loss"] = aux, total
    return out


def _adam(sae: SAE, lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel for all parameters: on a CPU over 10x faster than the loop of
    tensor ops) where the device has it; without torch's import of torch._dynamo
    (`optim.without_dynamo`)."""
    adam = without_dynamo(torch.optim.Adam)
    try:
        return adam(sae.parameters(), lr=lr, fused=True)
    except (RuntimeError, ValueError):
        return adam(sae.parameters(), lr=lr)


def step(sae: SAE, opt: torch.optim.Optimizer, x: torch.Tensor, since: torch.Tensor, s: Settings):
    """One optimizer step on rows x; updates `since` (tokens since each feature last fired)."""
    out = losses(sae, x, since, s)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    with torch.no_grad():
        g, w = sae.W_dec.grad, sae.W_dec
        if g is not None:  # no change of a row's length: only its direction learns
            g -= (g * w).sum(dim=1, keepdim=True) * w
    opt.step()
    sae.normalize_decoder()
    with torch.no_grad():
        since += x.shape[0]
        since[out["fired"]] = 0
    return out


# ----------------------------------------------------------------------------- the run


def _leftovers(directory: Path) -> None:
    for name in RUN_FILES:
        for tmp in directory.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()


def refuse_overwrite(directory: Path, resume: bool, overwrite: bool) -> None:
    """A new run never replaces an SAE or a run silently."""
    if resume:
        if not (directory / "checkpoint.pt").is_file():
            raise MyGPT2Error(
                f"nothing to resume: '{directory}' holds no checkpoint.pt of 'mygpt2 sae train'."
            )
        return
    held = [n for n in ("checkpoint.pt", files.CFG_FILENAME) if (directory / n).exists()]
    if held and not overwrite:
        raise MyGPT2Error(
            f"'{directory}' already holds an SAE ({', '.join(held)}). Continue its run with "
            "--resume, choose another --sae_dir, or replace it with --overwrite."
        )


def read_run(directory: Path) -> dict[str, Any]:
    """checkpoint.pt of an SAE run, checked."""
    state = load_torch_file(directory / "checkpoint.pt", "SAE training checkpoint")
    if not isinstance(state, dict) or state.get("kind") != "mygpt2-sae-run":
        raise MyGPT2Error(
            f"'{directory / 'checkpoint.pt'}' is not a checkpoint of mygpt2 sae train."
        )
    return state


def resumed_settings(saved: dict[str, Any], given: Settings, given_keys: set[str]) -> Settings:
    """The saved settings, with the given ones that may change on resume; others must agree."""
    merged = Settings(**saved)
    for key in sorted(given_keys):
        new, old = getattr(given, key), saved.get(key)
        if key in RESUMABLE:
            setattr(merged, key, new)
        elif new != old:
            raise MyGPT2Error(
                f"--{key} {new} differs from the run's {old}; a resumed run keeps it. Leave it "
                "out, or start a new run in another --sae_dir."
            )
    return merged


def _plot(history: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in history if r.get("kind") == "train"]
    if not rows:
        return
    tokens = [r["tokens"] / 1e6 for r in rows]
    panels = (("loss", "loss (reconstruction + penalties)"), ("l0", "L0 (features per token)"))
    panels += (("explained_variance", "explained variance"), ("dead_fraction", "dead fraction"))
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    for ax, (key, label) in zip(axes, panels, strict=True):
        ax.plot(tokens, [r[key] for r in rows], color="tab:blue")
        ax.set_xlabel("activation tokens (millions)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")
    fig.tight_layout()
    atomic_write(path, lambda fh: fig.savefig(fh, format="png", dpi=100))
    plt.close(fig)


def save_run(
    directory: Path, sae: SAE, opt: Any, state: dict[str, Any], log: MetricsLog, plot: bool
) -> None:
    """The SAE (SAELens's files) and checkpoint.pt, each atomically; with `plot`, the plot."""
    sae.cfg.metadata["mygpt2_step"] = state["step"]
    files.save(sae, directory)
    blob = {
        "kind": "mygpt2-sae-run",
        "version": 1,
        "sae": {k: v.detach().cpu() for k, v in sae.state_dict().items()},
        "optimizer": opt.state_dict(),
        "rng": rng_state(),
        "history": log.history,
        **state,
    }
    atomic_write(directory / "checkpoint.pt", lambda fh: torch.save(blob, fh))
    if plot:
        _plot(log.history, directory / "loss_plot.png")


def train_sae(
    model: Any,
    train_tokens: Any,
    s: Settings,
    sae_dir: str | Path,
    *,
    source: dict[str, Any],
    resume: bool = False,
    overwrite: bool = False,
    break_lock: bool = False,
    stop_at: int = 0,
    given: set[str] | None = None,
    resume_line: str = "",
    command: str = "mygpt2 sae train",
    say: Any = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or resume) an SAE on `model`'s hook `s.hook` over `train_tokens`; returns a summary
    (`signal` is set when SIGINT/SIGTERM stopped it after saving). `source` records the model
    and data, checked on resume; `command` is what the lock file says holds the directory."""
    directory = Path(sae_dir)
    check_hook_name(model, s.hook)
    s.check()
    refuse_overwrite(directory, resume, overwrite)
    created = not directory.exists()
    with StopSignals() as signals:
        lock = DirectoryLock(directory, command, break_lock=break_lock)
        lock.acquire()
        signals.deferred = True  # from here a signal stops the run after a step, saved
        try:
            _leftovers(directory)
            return _run(
                model,
                train_tokens,
                s,
                directory,
                source,
                resume,
                stop_at,
                given or set(),
                resume_line,
                say,
                progress,
                signals,
            )
        finally:
            lock.release()
            if created and directory.is_dir() and not any(directory.iterdir()):
                directory.rmdir()  # a run that saved nothing leaves nothing


def _run(
    model,
    train_tokens,
    s,
    directory,
    source,
    resume,
    stop_at,
    given,
    resume_line,
    say,
    progress,
    signals,
) -> dict[str, Any]:
    saved = read_run(directory) if resume else None
    if saved is not None:
        s = resumed_settings(saved["settings"], s, given)
        for key in ("model", "data"):
            if saved["source"].get(key) != source.get(key):
                raise MyGPT2Error(
                    f"--resume: the {key} differs from the run's ({saved['source'].get(key)} "
                    f"then, {source.get(key)} now); give the same flags as the run had."
                )
    context = s.context or model.config.T
    if context > model.config.T:
        raise MyGPT2Error(f"--context {context} is longer than the model's T={model.config.T}.")
    d_in = hook_width(model, s.hook)
    buffer_batches = max(1, s.buffer_tokens // (s.model_batch * context))
    windows = TokenWindows(train_tokens, context, s.seed)
    stream = ActivationStream(
        model,
        s.hook,
        windows,
        batch_size=s.batch_size,
        model_batch=s.model_batch,
        buffer_batches=buffer_batches,
        seed=s.seed,
    )
    torch.manual_seed(s.seed)
    cfg = sae_config(s, d_in, str(source.get("model", {}).get("name", "")), context)
    device = model.transformer.wte.weight.device
    sae = SAE(cfg, generator=torch.Generator().manual_seed(s.seed)).to(device)
    opt = _adam(sae, s.lr)
    since = torch.zeros(s.d_sae, dtype=torch.long, device=device)
    first = 0
    if saved is None:
        with torch.no_grad():
            sae.b_dec.copy_(stream.peek(s.batch_size).mean(0))
        log = MetricsLog(directory, [])
    else:
        sae.load_state_dict(saved["sae"])
        opt.load_state_dict(saved["optimizer"])
        since.copy_(saved["since_fired"])
        stream.restore(saved["stream"])
        set_rng_state(saved["rng"])
        first = saved["step"]
        log = MetricsLog(directory, saved["history"])
    total = math.ceil(s.tokens / s.batch_size)
    say(
        f"sae train: {s.architecture} SAE, d_in {d_in} -> d_sae {s.d_sae} at {s.hook}; "
        f"{total} steps of {s.batch_size} activation rows ({total * s.batch_size:,} tokens), "
        f"context {context}, shuffled across {buffer_batches * s.model_batch} windows; "
        f"into '{directory}'" + (f", resumed at step {first}" if first else "")
    )

    def state(at: int) -> dict[str, Any]:
        return {
            "step": at,
            "settings": asdict(s),
            "source": source,
            "stream": stream.state(),
            "since_fired": since.cpu().clone(),
        }

    bar = tqdm(
        total=total,
        initial=first,
        desc="sae",
        unit="step",
        disable=not progress,
        dynamic_ncols=True,
    )
    stopped_by, at, row = 0, first, None
    t0 = time.perf_counter()
    try:
        for at in range(first + 1, total + 1):
            x = stream.next_batch()
            out = step(sae, opt, x, since, s)
            t1 = time.perf_counter()
            row = {
                "kind": "train",
                "step": at,
                "tokens": at * s.batch_size,
                "loss": float(out["loss"].detach()),
                "recon": float(out["recon"].detach()),
                "aux_loss": float(out["aux"].detach()),
                **batch_stats(x, out["x_hat"], float(out["active"])),
                "dead_fraction": float((since >= s.dead_window).float().mean()),
                "tokens_per_s": s.batch_size / max(t1 - t0, 1e-9),
            }
            t0 = t1
            log.log(row)
            bar.set_postfix(
                {
                    "loss": f"{row['loss']:.4g}",
                    "L0": f"{row['l0']:.1f}",
                    "EV": f"{row['explained_variance']:.3f}",
                    "dead": f"{row['dead_fraction']:.2f}",
                    "tok/s": f"{row['tokens_per_s']:,.0f}",
                },
                refresh=False,
            )
            bar.update(1)
            stopping = signals.requested or at == stop_at
            if stopping or at % s.checkpoint_every == 0 or at == total:
                save_run(directory, sae, opt, state(at), log, plot=stopping or at == total)
            if stopping:
                stopped_by = signals.signum
                break
        else:
            if first >= total:
                say(
                    f"the run in '{directory}' is already at step {first} of {total}; nothing to "
                    "do (a larger --tokens continues it)."
                )
    finally:
        bar.close()
        signals.deferred = False
        log.close()
    summary = {
        "step": at,
        "steps": total,
        "signal": stopped_by,
        "sae_dir": str(directory),
        "last": row,
    }
    if at < total:
        say(f"\nstopped at step {at} of {total}; resume with: {resume_line or '--resume'}")
    elif row is not None:
        say(
            f"\ndone: {total} steps; last batch: L0 {row['l0']:.1f}, explained variance "
            f"{row['explained_variance']:.3f}, dead fraction {row['dead_fraction']:.3f}; "
            f"SAE in '{directory}' (mygpt2 sae eval --sae_dir {directory} for the loss figures)."
        )
    return summary


def model_source(cfg: Any, model: Any, tok: Any) -> dict[str, Any]:
    """What a run records of its model and data, to check them on --resume."""
    if cfg.run.init_from != "scratch":
        name = cfg.run.init_from  # a hub name, or a Hugging Face directory
    else:
        name = data_identity(cfg.run.checkpoint or str(Path(cfg.run.out_dir) / "checkpoint.pt"))
    model_cfg = {k: v for k, v in vars(model.config).items() if isinstance(v, (int, float, str))}
    return {
        "model": {"name": name, "config": model_cfg, "tokenizer": tok.fingerprint()},
        "data": {"data": data_identity(cfg.data.data)},
    }
