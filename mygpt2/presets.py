"""Named settings for `--preset NAME`: GPT-2's shapes, and whole recipes such as the CPU
speedrun's. A preset sets config fields (any section's) as if they were given in a file;
flags on the command line still win."""

from __future__ import annotations

from typing import Any

# Model shapes (the "small" preset is the default ModelConfig: fast on a CPU), and recipes.
PRESETS: dict[str, dict[str, Any]] = {
    "small": dict(n_layers=4, n_heads=4, n_emb=128, T=128),
    "gpt2": dict(n_layers=12, n_heads=12, n_emb=768, T=1024, vocab_size=50257),
    "gpt2-medium": dict(n_layers=24, n_heads=16, n_emb=1024, T=1024, vocab_size=50257),
    "gpt2-large": dict(n_layers=36, n_heads=20, n_emb=1280, T=1024, vocab_size=50257),
    "gpt2-xl": dict(n_layers=48, n_heads=25, n_emb=1600, T=1024, vocab_size=50257),
    # The CPU speedrun's record recipe (docs/SPEEDRUN.md): a whole run, not only a shape.
    "shakespeare-speedrun": dict(
        data="shakespeare",
        tokenizer_path="bytes",
        n_layers=3,
        n_heads=4,
        n_emb=128,
        T=64,
        bias=False,
        norm="rmsnorm",
        mlp="relu2",
        qk_norm=True,
        tie_embeddings=False,
        optimizer="muon",
        muon_lr=0.06,
        lr=1e-2,
        min_lr=3e-4,
        beta2=0.99,
        warmup_ratio=0.02,
        schedule="wsd",
        decay_ratio=0.4,
        batch_size=32,
        macro_batch_size=32,
        max_steps=300,
        eval_interval=300,  # one evaluation, at the end: each costs ~111k tokens' forward
        eval_batches=7,  # 7 x 256 blocks of 64 cover the whole validation split
        val_batch_size=256,
        target_val_loss=1.8857,
        dtype="bfloat16",  # as the record ran (explicit: auto picks it only with native bf16)
        out_dir="out-speedrun",
    ),
}
