"""`mygpt2.rmsnorm`: RMSNorm with its own backward, against F.rms_norm and autograd."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mygpt2.rmsnorm import RMSNorm, rms_norm


def _reference(x, weight, eps):
    """F.rms_norm in float64 with autograd's own backward: the values to meet."""
    x64 = x.detach().double().requires_grad_()
    w64 = None if weight is None else weight.detach().double().requires_grad_()
    return x64, w64, F.rms_norm(x64, (x.size(-1),), w64, eps)


@pytest.mark.parametrize("weighted", [True, False])
def test_float32_values_and_gradients_equal_f_rms_norm(weighted):
    torch.manual_seed(0)
    x = (3 * torch.randn(4, 7, 3, 32)).requires_grad_()  # (B, t, nh, hs), as qk_norm sees
    w = torch.randn(32).requires_grad_() if weighted else None
    x_before = x.detach().clone()
    y = rms_norm(x, w, 1e-5)
    g = torch.randn_like(y)
    g_before = g.clone()
    y.backward(g)
    x64, w64, want = _reference(x, w, 1e-5)
    want.backward(g.double())
    assert y.dtype == torch.float32
    torch.testing.assert_close(y.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    if weighted:
        torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-5, atol=1e-5)
    # neither the input nor the incoming gradient was written in place
    assert torch.equal(x.detach(), x_before) and torch.equal(g, g_before)


def test_bf16_input_is_normalised_in_float32_and_returned_in_bf16():
    """A bf16 activation: the arithmetic in float32 (as F.rms_norm does on the same bf16
    values taken to float64), the result and the input gradient in bf16, the float32 gain's
    gradient in float32."""
    torch.manual_seed(1)
    x = torch.randn(64, 128).bfloat16().requires_grad_()
    w = (1 + 0.1 * torch.randn(128)).requires_grad_()
    y = rms_norm(x, w, 1e-5)
    g = torch.randn(64, 128).bfloat16()
    y.backward(g)
    x64, w64, want = _reference(x, w, 1e-5)
    want.backward(g.double())
    assert y.dtype == x.grad.dtype == torch.bfloat16 and w.grad.dtype == torch.float32
    step = 2**-7  # bf16 keeps 8 significant bits: within one step of values up to 2
    assert (y.double() - want).abs().max().item() <= step * want.abs().max().item()
    assert (x.grad.double() - x64.grad).abs().max().item() <= step * x64.grad.abs().max().item()
    torch.testing.assert_close(w.grad.double(), w64.grad, rtol=1e-4, atol=1e-4)


def test_eps_none_is_the_dtypes_epsilon_as_in_f_rms_norm():
    x = torch.full((2, 8), 1e-4)
    want = F.rms_norm(x, (8,), None, None)
    torch.testing.assert_close(rms_norm(x, None, None), want)
    assert not torch.allclose(rms_norm(x, None, 1e-5), want)  # eps matters at this scale


def test_the_module_is_nn_rmsnorm_with_the_same_state_and_output():
    torch.manual_seed(2)
    ours, theirs = RMSNorm(16, eps=1e-5), nn.RMSNorm(16, eps=1e-5)
    with torch.no_grad():
        ours.weight.normal_()
    theirs.load_state_dict(ours.state_dict())
    assert isinstance(ours, nn.RMSNorm) and list(ours.state_dict()) == ["weight"]
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("weighted", [True, False])
def test_a_retained_graph_gives_the_same_gradients_twice_and_the_output_is_its_own(dtype, weighted):
    """Backward reads the normalised input it kept and leaves it as it was: a second
    backward through a retained graph gives the same gradients bit for bit, and writing into
    the output does not reach what backward reads."""
    torch.manual_seed(2)
    x = torch.randn(5, 3, 16).to(dtype).requires_grad_()
    w = (1 + 0.1 * torch.randn(16)).requires_grad_() if weighted else None
    y = rms_norm(x, w, 1e-5)
    g = torch.randn_like(y)
    y.backward(g, retain_graph=True)
    first = [x.grad.clone()] + ([w.grad.clone()] if weighted else [])
    x.grad = None
    if weighted:
        w.grad = None
    y.backward(g)
    second = [x.grad] + ([w.grad] if weighted else [])
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))

    z = rms_norm(x, w, 1e-5)
    with torch.no_grad():
        z.mul_(0)  # the caller's tensor, not the kept one
    assert torch.equal(torch.autograd.grad(z, x, g)[0], first[0])
