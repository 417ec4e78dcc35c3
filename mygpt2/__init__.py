"""mygpt2: a small, fast, readable GPT-2 toolkit.

Trainable tokenizer (`mygpt2.tokenizer`), data pipeline (`mygpt2.data`), model with KV-cache
generation and GPT-2 weights in and out (`mygpt2.model`), training (`mygpt2.train`) and
sampling (`mygpt2.sample`), behind one command, `mygpt2`.
"""

__version__ = "0.1.0"
