"""The training loss: the fused, chunked linear + cross-entropy against F.cross_entropy."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from mygpt2.config import ModelConfig
from mygpt2.loss import linear_cross_entropy
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


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_linear_cross_entropy_in_many_chunks_matches_plain(reduction):
    from mygpt2.loss import linear_cross_entropy

    torch.manual_seed(1)
    h = torch.randn(50, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    y = torch.randint(0, 30, (50,))
    y[::4] = -100
    plain = F.cross_entropy(h @ w.t(), y, ignore_index=-100, reduction=reduction)
    gh, gw = torch.autograd.grad(plain, (h, w))
    chunked = linear_cross_entropy(h, w, y, 7, reduction)  # 8 chunks of 7 or fewer rows
    ch, cw = torch.autograd.grad(chunked, (h, w))
    torch.testing.assert_close(chunked, plain)
    torch.testing.assert_close(ch, gh)
    torch.testing.assert_close(cw, gw)


@pytest.mark.parametrize(
    ("rows", "most", "sizes"),
    [
        (768, 667, [384, 384]),
        (1024, 667, [512, 512]),
        (50, 7, [6, 6, 6, 7] * 2),
        (10, 4, [3, 3, 4]),
    ],
)
def test_rows_go_in_the_fewest_chunks_within_a_row_of_each_other(rows, most, sizes, monkeypatch):
    from mygpt2 import loss

    seen = []
    real = loss._chunk_loss_and_grad_eager
    monkeypatch.setattr(
        loss,
        "_chunk_loss_and_grad_eager",
        lambda logits, *a: seen.append(len(logits)) or real(logits, *a),
    )
    h, w = torch.randn(rows, 4), torch.randn(6, 4)
    loss.linear_cross_entropy(h, w, torch.randint(0, 6, (rows,)), most)
    assert seen == sizes


@pytest.mark.parametrize("return_logits", [False, True])
def test_model_sum_reduction_is_mean_times_valid_targets(return_logits):
    torch.manual_seed(2)
    model = GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=8, vocab_size=50))
    x = torch.randint(0, 50, (3, 8))
    y = torch.randint(0, 50, (3, 8))
    y[1, 3:] = -100
    _, mean = model(x, y, return_logits=return_logits)
    _, total = model(x, y, return_logits=return_logits, reduction="sum")
    torch.testing.assert_close(total, mean * 19)  # 24 targets, 5 ignored


def test_fp16_autocast_with_loss_scaling_keeps_small_gradients():
    """Under fp16 autocast and a GradScaler, the fused loss's gradients are those of
    F.cross_entropy on the same fp16 logits. Dividing the softmax by the token count before the
    fp16 matmul (values near 1 / (vocab * tokens) = 1.2e-7, below fp16's normal range) would
    round small gradients away: the final LayerNorm's gain was 86% off."""
    torch.manual_seed(0)
    vocab = 4096
    model = GPT(ModelConfig(n_layers=1, n_heads=2, n_emb=16, T=32, vocab_size=vocab))
    x = torch.randint(0, vocab, (64, 32))
    y = torch.randint(0, vocab, (64, 32))
    y[0, :5] = -100
    scaler = torch.amp.GradScaler("cpu", init_scale=65536.0)

    def grads(fused: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            if fused:
                _, loss = model(x, y, return_logits=False)
            else:
                logits, _ = model(x)
                loss = F.cross_entropy(logits.view(-1, vocab).float(), y.view(-1))
        scaler.scale(loss).backward()
        return {n: p.grad.float() / scaler.get_scale() for n, p in model.named_parameters()}

    fused, reference = grads(True), grads(False)
    for name, want in reference.items():
        error = ((fused[name] - want).norm() / want.norm()).item()
        assert error < 1e-2, f"{name}: relative error {error:.3g}"  # fp16 noise is ~1e-3


@pytest.mark.parametrize("kernel", ["eager", "compiled"])
def test_bf16_autocast_loss_and_gradients_are_those_of_bf16_logits(kernel, monkeypatch):
    """Under bf16 autocast all three matmuls of the fused loss run in bf16: the loss and the
    gradients match F.cross_entropy on the same bf16 logits within bf16's rounding, and the
    weight gradient, summed over chunks in float32, stays float32. Both chunk kernels: the
    eager ops, and the compiled one that large chunks take (forced here on small ones)."""
    import mygpt2.loss
    from mygpt2.loss import linear_cross_entropy

    if kernel == "compiled":
        if mygpt2.loss._compiled_for_cpu() is None:
            pytest.skip("torch.compile cannot work here (no C++ compiler or Python headers)")
        monkeypatch.setattr(mygpt2.loss, "COMPILED_CHUNK_MIN_ELEMENTS", 0)
    else:
        monkeypatch.setattr(mygpt2.loss, "COMPILED_CHUNK_MIN_ELEMENTS", 2**62)

    torch.manual_seed(3)
    h = torch.randn(300, 64, requires_grad=True)
    w = (0.1 * torch.randn(1000, 64)).requires_grad_()
    y = torch.randint(0, 1000, (300,))
    y[:60:7] = -100  # in the first chunk only: the others take the path with nothing to mask
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = h @ w.t()  # bf16, as the fused path computes them
    plain = F.cross_entropy(logits.float(), y, ignore_index=-100, reduction="sum")
    gh, gw = torch.autograd.grad(plain, (h, w))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = linear_cross_entropy(h, w, y, 64, "sum")  # 5 chunks, the last one short
    fh, fw = torch.autograd.grad(fused, (h, w))
    assert fh.dtype == fw.dtype == torch.float32
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    for got, want in ((fh, gh), (fw, gw)):
        error = ((got - want).norm() / want.norm()).item()
        assert error < 1e-2, f"relative error {error:.3g}"  # bf16 rounding is ~4e-3


def test_the_fused_loss_backward_runs_once():
    from mygpt2.loss import linear_cross_entropy

    h = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(10, 4, requires_grad=True)
    loss = linear_cross_entropy(h, w, torch.randint(0, 10, (8,)), 4)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="handed over once"):
        loss.backward()


def test_a_mean_over_no_valid_target_is_zero_not_nan():
    """`mean` divides by the valid targets, at least 1: every target ignored gives loss 0 and
    zero gradients (F.cross_entropy's mean would be NaN)."""
    from mygpt2.loss import linear_cross_entropy

    h = torch.randn(6, 8, requires_grad=True)
    w = torch.randn(30, 8, requires_grad=True)
    y = torch.full((6,), -100)
    loss = linear_cross_entropy(h, w, y, 4, "mean")
    assert loss.item() == 0.0
    gh, gw = torch.autograd.grad(loss, (h, w))
    assert torch.equal(gh, torch.zeros_like(h)) and torch.equal(gw, torch.zeros_like(w))
    y[4] = 7  # one valid target: its own -log softmax
    loss = linear_cross_entropy(h, w, y, 4, "mean")
    torch.testing.assert_close(loss, -torch.log_softmax(h[4] @ w.t(), -1)[7])


def test_the_compiled_chunk_kernel_equals_the_eager_one():
    """The two forms of a chunk's loss and gradient agree: the loss within float32 rounding,
    the bf16 gradient within one bf16 step (their exp differ in the last float32 bits), rows
    with an ignored target exactly zero in both, and the one-hot taken off in float32."""
    from mygpt2.loss import _chunk_loss_and_grad_eager, _compiled_for_cpu

    compiled = _compiled_for_cpu()
    if compiled is None:
        pytest.skip("torch.compile cannot work here (no C++ compiler or Python headers)")
    gen = torch.Generator().manual_seed(5)
    logits = (3 * torch.randn(37, 5003, generator=gen)).bfloat16()
    logits[0, 11] = 40.0  # a near-certain target: p - 1 must not round to 0 - 1
    targets = torch.randint(0, 5003, (37,), generator=gen)
    targets[0] = 11
    valid = torch.ones(37)
    valid[[3, 20]] = 0.0
    targets[[3, 20]] = 0  # as the caller passes ignored targets: clamped, then masked
    for out_dtype in (torch.bfloat16, torch.float32):
        want_loss, want = _chunk_loss_and_grad_eager(logits, targets, valid, out_dtype)
        got_loss, got = compiled(logits, targets, valid, out_dtype)
        assert got.dtype == want.dtype == out_dtype
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=0)
        step = 2**-8 if out_dtype == torch.bfloat16 else 1e-6  # bf16: 8 bits
        assert (got.float() - want.float()).abs().max().item() <= step
        assert torch.equal(got[[3, 20]].float(), torch.zeros(2, 5003))
        logp = torch.log_softmax(logits[0].float(), -1)
        assert got[0, 11].item() == pytest.approx(logp[11].exp().item() - 1.0, rel=1e-2)
        assert got[0, 11].item() != -1.0
    assert not compiled.failed  # the compiled kernel ran, not the eager fallback


def test_a_compiled_kernel_that_cannot_be_built_falls_back_to_the_eager_ops(monkeypatch):
    """A compiler that is found but fails (inductor raises at the first call): one warning
    naming the failure, the eager ops' values, and no second attempt."""
    import mygpt2.loss

    calls = []

    def broken(*args):
        calls.append(1)
        raise RuntimeError("CppCompileError: C++ compile error\nmore detail")

    monkeypatch.setattr(
        mygpt2.loss, "_compiled_for_cpu", lambda: mygpt2.loss._CompiledOrEager(broken)
    )
    monkeypatch.setattr(mygpt2.loss, "COMPILED_CHUNK_MIN_ELEMENTS", 0)
    torch.manual_seed(4)
    h = torch.randn(40, 16, requires_grad=True)
    w = torch.randn(300, 16, requires_grad=True)
    y = torch.randint(0, 300, (40,))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.warns(UserWarning) as caught:
        loss = mygpt2.loss.linear_cross_entropy(h, w, y, 16, "sum")  # 3 chunks
    assert len(caught) == 1 and "could not be built (RuntimeError: CppCompileError" in str(
        caught[0].message
    )
    assert len(calls) == 1  # not retried for the next chunks
    monkeypatch.setattr(mygpt2.loss, "COMPILED_CHUNK_MIN_ELEMENTS", 2**62)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = mygpt2.loss.linear_cross_entropy(h, w, y, 16, "sum")
    assert loss.item() == want.item()


def test_float32_logits_take_their_softmax_in_place():
    """The eager chunk kernel overwrites float32 logits with their gradient (no second
    buffer of their size) and gives the functional form's values."""
    from mygpt2.loss import _chunk_loss_and_grad, _chunk_loss_and_grad_eager

    gen = torch.Generator().manual_seed(2)
    for ignored in ([4], []):  # with an ignored row (masked), and without (no masking pass)
        logits = 4 * torch.randn(9, 301, generator=gen)
        targets = torch.randint(0, 301, (9,), generator=gen)
        valid = torch.ones(9)
        valid[ignored] = 0.0
        want_loss, want = _chunk_loss_and_grad(logits.clone(), targets, valid, torch.float32)
        got_loss, got = _chunk_loss_and_grad_eager(logits, targets, valid, torch.float32)
        assert got.data_ptr() == logits.data_ptr()  # the logits' own memory
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert torch.equal(got[ignored], torch.zeros(len(ignored), 301))


@pytest.mark.parametrize("autocast", [None, torch.bfloat16, torch.float16])
def test_a_loss_whose_target_probability_underflows_is_exact_not_inf(autocast):
    """The eager kernel takes each row's loss as -log of its softmax at the target; where
    that probability underflows (here about e^-310), the row's loss comes from its logits
    again: F.cross_entropy's value, not inf; an ignored row whose (clamped) target underflows
    weighs nothing, not NaN; and the gradients still equal F.cross_entropy's. In chunks of
    three rows, so the underflowing row sits in the second chunk."""
    torch.manual_seed(3)
    h = torch.randn(6, 4, dtype=torch.float64)
    w = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randint(1, 50, (6,))
    h[[1, 4], 0], h[[1, 4], 1:] = 10.0, 0.0
    w[:, 0] = 0.0
    w[[0, 7], 0], w[9, 0] = -30.0, 1.0  # rows 1 and 4: logit -300 at tokens 0 and 7, 10 at 9
    y[4], y[1] = 7, -100  # row 4 underflows; row 1 is ignored, its target clamped to 0
    h, w = h.float().requires_grad_(), w.float().requires_grad_()
    with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        got = linear_cross_entropy(h, w, y, 4, "sum")  # chunks of 3 + 3 rows
        want = F.cross_entropy(h @ w.t(), y, ignore_index=-100, reduction="sum")
    assert torch.isfinite(got) and want.item() > 300
    tol = 1e-5 if autocast is None else 1e-2
    torch.testing.assert_close(got, want.float(), rtol=tol, atol=0)
    got_grads = torch.autograd.grad(got, (h, w))
    want_grads = torch.autograd.grad(want, (h, w))
    for g, r in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, r.float(), rtol=1e-4, atol=1e-5 if autocast is None else 0.05)


def test_fp16_autocast_over_many_chunks_sums_the_weight_gradient_in_float32():
    """Under fp16 autocast the weight gradient's product stays float32 (an fp16 product
    there made the second chunk's in-place sum fail on mixed dtypes)."""
    torch.manual_seed(6)
    h = torch.randn(20, 8, requires_grad=True)
    w = torch.randn(40, 8, requires_grad=True)
    y = torch.randint(0, 40, (20,))
    with torch.autocast("cpu", dtype=torch.float16):
        got = linear_cross_entropy(h, w, y, 6, "sum")  # 4 chunks
        want = F.cross_entropy(h @ w.t(), y, reduction="sum")
    torch.testing.assert_close(got, want.float(), rtol=1e-2, atol=0)
    (gw,) = torch.autograd.grad(got, (w,))
    (ww,) = torch.autograd.grad(want, (w,))
    torch.testing.assert_close(gw, ww, rtol=0, atol=0.05)
