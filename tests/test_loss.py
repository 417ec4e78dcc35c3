"""The training loss: the fused, chunked linear + cross-entropy against F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mygpt2.config import ModelConfig
from mygpt2.model import GPT


def test_loss_ignores_minus_100_targets():
    torch.manual_seed(25)
    model = GPT(ModelConfig(n_layers=2, n_heads=2, n_emb=32, T=16, vocab_size=61))
    idx = torch.randint(0, 61, (3, 10))
    targets = torch.randint(0, 61, (3, 10))
    targets[0, :4] = -100
    targets[2, 7:] = -100
    logits, loss = model(idx, targets)
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, expected)


@pytest.mark.parametrize("pad_vocab", [False, True])
def test_chunked_training_loss_matches_plain_cross_entropy(pad_vocab):
    """`return_logits=False` (the training path) gives the same loss and gradients."""

    torch.manual_seed(0)
    model = GPT(
        ModelConfig(n_layers=2, n_heads=2, n_emb=32, T=16, vocab_size=1000, pad_vocab=pad_vocab)
    )
    x = torch.randint(0, 1000, (5, 16))
    y = torch.randint(0, 1000, (5, 16))
    y[0, :7] = -100  # ignored positions
    _, plain = model(x, y)
    plain.backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits, chunked = model(x, y, return_logits=False)
    assert logits is None
    chunked.backward()
    assert chunked.item() == pytest.approx(plain.item(), rel=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, want[name], rtol=1e-5, atol=1e-6, msg=name)


def test_linear_cross_entropy_in_many_chunks_matches_plain():
    from mygpt2.loss import LinearCrossEntropy

    torch.manual_seed(1)
    h = torch.randn(50, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    y = torch.randint(0, 30, (50,))
    y[::4] = -100
    plain = torch.nn.functional.cross_entropy(h @ w.t(), y, ignore_index=-100)
    gh, gw = torch.autograd.grad(plain, (h, w))
    chunked = LinearCrossEntropy.apply(h, w, y, 7)  # 8 chunks, the last one short
    ch, cw = torch.autograd.grad(chunked, (h, w))
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(ch, gh)
    torch.testing.assert_close(cw, gw)
