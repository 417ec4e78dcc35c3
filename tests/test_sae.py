"""mygpt2.sae: the SAE's arithmetic by hand, its files, the splice, and the metrics computed
by hand on tiny cases (the model's losses through its own forward)."""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch
from models import tiny_gpt
from torch.nn import functional as F

import mygpt2.sae as sae_api
from mygpt2.errors import MyGPT2Error
from mygpt2.sae import SAE, SAEConfig
from mygpt2.sae.files import CFG_FILENAME, WEIGHTS_FILENAME
from mygpt2.sae.measure import Evaluation, ReconstructionSums, evaluate
from mygpt2.sae.stream import ActivationStream, TokenWindows, activations

HOOK = "blocks.0.hook_resid_post"


def hand_sae(architecture: str = "standard", **kw) -> SAE:
    """d_in 2, d_sae 3, weights chosen to be followed by hand."""
    sae = SAE(SAEConfig(d_in=2, d_sae=3, architecture=architecture, hook_name=HOOK, **kw))
    with torch.no_grad():
        sae.W_enc.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, -1.0]]))
        sae.b_enc.copy_(torch.tensor([0.0, -1.0, 0.5]))
        sae.W_dec.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
        sae.b_dec.copy_(torch.tensor([1.0, 0.0]))
        if architecture == "jumprelu":
            sae.threshold.copy_(torch.tensor([1.5, 1.5, 0.0]))
    return sae


def test_encode_decode_by_hand():
    x = torch.tensor([[2.0, 3.0]])
    # x - b_dec = [1, 3]; pre = [1, 3 - 1, 1 - 3 + 0.5] = [1, 2, -1.5]
    standard = hand_sae()
    assert standard.pre_acts(x).tolist() == [[1.0, 2.0, -1.5]]
    assert standard.encode(x).tolist() == [[1.0, 2.0, 0.0]]
    # x_hat = 1 * [1, 0] + 2 * [0, 1] + b_dec [1, 0] = [2, 2]
    assert standard(x).tolist() == [[2.0, 2.0]]
    assert hand_sae("topk", k=1).encode(x).tolist() == [[0.0, 2.0, 0.0]]
    assert hand_sae("topk", k=2).encode(x).tolist() == [[1.0, 2.0, 0.0]]
    # jumprelu: pre > threshold [1.5, 1.5, 0] only for feature 1
    assert hand_sae("jumprelu").encode(x).tolist() == [[0.0, 2.0, 0.0]]
    # without b_dec on the input: pre = [2, 3 - 1, 2 - 3 + 0.5]
    assert hand_sae(apply_b_dec_to_input=False).encode(x).tolist() == [[2.0, 2.0, 0.0]]
    # TopK never keeps a negative value: ReLU after the selection (pre = [-2, -1, -1.5])
    assert hand_sae("topk", k=3).encode(torch.tensor([[-1.0, 0.0]])).tolist() == [[0.0] * 3]


def test_topk_rescaled_by_decoder_norms_by_hand():
    """SAELens's rescale_acts_by_decoder_norm: choose the top k of pre * ||W_dec[i]||, decode
    f / ||W_dec[i]||."""
    sae = hand_sae("topk", k=1, rescale_acts_by_decoder_norm=True)
    with torch.no_grad():
        sae.W_dec.copy_(torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.6, 0.8]]))
    x = torch.tensor([[2.0, 3.0]])  # pre [1, 2, -1.5] * norms [3, 1, 1] = [3, 2, -1.5]
    assert sae.encode(x).tolist() == [[3.0, 0.0, 0.0]]
    # decode: 3 / 3 * [3, 0] + b_dec [1, 0] = [4, 0]
    assert sae(x).tolist() == [[4.0, 0.0]]


def test_new_sae_has_unit_decoder_rows_and_a_tied_encoder():
    sae = SAE(SAEConfig(d_in=8, d_sae=20, k=3), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sae.W_dec.norm(dim=1), torch.ones(20), atol=1e-6)
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert (sae.encode(torch.randn(5, 8)) != 0).sum(-1).tolist() == [3] * 5


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"k": 0}, "k must be an integer from 1 to d_sae=4"),
        ({"k": 5}, "k must be an integer from 1 to d_sae=4"),
        ({"d_sae": 0}, "d_sae must be a positive integer"),
        ({"architecture": "gated"}, "unknown SAE architecture 'gated'"),
        ({"dtype": "int8"}, "dtype is one of"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations 'layer_norm'"),
    ],
)
def test_config_refuses_out_of_range(changes, words):
    with pytest.raises(MyGPT2Error, match=words):
        SAEConfig(**{"d_in": 2, "d_sae": 4, "k": 2, **changes})


def test_save_and_load_round_trip_every_architecture(tmp_path):
    x = torch.randn(6, 2)
    for arch in ("standard", "topk", "jumprelu"):
        sae = hand_sae(arch, **({"k": 2} if arch == "topk" else {}))
        sae.cfg.metadata["dataset"] = "somewhere"
        sae_api.save(sae, tmp_path / arch)
        back = sae_api.load(tmp_path / arch)
        assert back.cfg.replace(metadata={}) == sae.cfg.replace(metadata={})
        assert back.cfg.metadata["dataset"] == "somewhere"
        sae_api.save(back, tmp_path / f"{arch}-again")  # a second round changes nothing
        assert sae_api.load(tmp_path / f"{arch}-again").cfg == back.cfg
        for name, tensor in sae.state_dict().items():
            assert torch.equal(back.state_dict()[name], tensor), name
        assert torch.equal(back(x), sae(x))
        cfg = json.loads((tmp_path / arch / CFG_FILENAME).read_text(encoding="utf-8"))
        assert cfg["architecture"] == arch and cfg["metadata"]["hook_name"] == HOOK
        assert cfg["metadata"]["sae_lens_version"] == "6.0.0"  # SAELens's 6.x layout
        assert cfg["metadata"]["dataset"] == "somewhere"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize(("d_in", "d_sae"), [(64, 1), (1, 16), (1, 1)])
def test_an_sae_with_a_dimension_of_one_keeps_its_two_weights_apart(tmp_path, d_in, d_sae):
    """With d_in or d_sae 1 the encoder, made as the decoder's transpose, shared its memory:
    trained as one tensor, refused by safetensors on save, loaded as the decoder's transpose."""
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, k=1, hook_name=HOOK))
    assert sae.W_enc.data_ptr() != sae.W_dec.data_ptr()
    with torch.no_grad():  # distinct values, as a trained SAE or another tool's file has
        sae.W_enc.copy_(torch.randn(d_in, d_sae))
        sae.W_dec.copy_(torch.randn(d_sae, d_in))
    sae_api.save(sae, tmp_path / "one")
    back = sae_api.load(tmp_path / "one")
    assert torch.equal(back.W_enc, sae.W_enc) and torch.equal(back.W_dec, sae.W_dec)


def one_line_error(path) -> str:
    with pytest.raises(MyGPT2Error) as info:
        sae_api.load(path)
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_load_refuses_what_is_no_sae(tmp_path):
    assert "does not exist" in one_line_error(tmp_path / "nope")
    (tmp_path / "file").write_text("x", encoding="utf-8")
    assert "is a file" in one_line_error(tmp_path / "file")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"not an sae")
    assert "not an SAE directory: it has no cfg.json" in one_line_error(run)
    (run / CFG_FILENAME).write_text("{not json", encoding="utf-8")
    assert "not valid JSON" in one_line_error(run)
    (run / CFG_FILENAME).write_text('{"model": "gpt2"}', encoding="utf-8")
    assert "names no d_in and d_sae" in one_line_error(run)


def saved(tmp_path, arch="topk"):
    sae = hand_sae(arch, **({"k": 2} if arch == "topk" else {}))
    return sae_api.save(sae, tmp_path / "sae")


def test_load_refuses_truncated_missing_and_foreign_weights(tmp_path):
    d = saved(tmp_path)
    weights = d / WEIGHTS_FILENAME
    blob = weights.read_bytes()
    weights.write_bytes(blob[: len(blob) // 2])
    assert "truncated or corrupt" in one_line_error(d)
    weights.write_bytes(blob[:5])
    assert "truncated or corrupt" in one_line_error(d)
    weights.unlink()
    assert "no weights" in one_line_error(d)
    # the weights of another shape than cfg.json says
    weights.write_bytes(blob)
    cfg = json.loads((d / CFG_FILENAME).read_text(encoding="utf-8"))
    (d / CFG_FILENAME).write_text(json.dumps({**cfg, "d_in": 3}), encoding="utf-8")
    assert "W_enc is (2, 3), but cfg.json's d_in=3, d_sae=3 make it (3, 3)" in one_line_error(d)
    (d / CFG_FILENAME).write_text(json.dumps({**cfg, "architecture": "jumprelu"}), "utf-8")
    assert "lacks threshold" in one_line_error(d)
    (d / CFG_FILENAME).write_text(json.dumps({**cfg, "k": 9}), encoding="utf-8")
    assert "k must be an integer from 1 to d_sae=3" in one_line_error(d)


class _Trap:
    """Unpickling it creates the file `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_loading_never_unpickles(tmp_path):
    """A pickle under the weights' name is refused, and its code never runs."""
    d = saved(tmp_path)
    trap = tmp_path / "trap-ran"
    (d / WEIGHTS_FILENAME).write_bytes(pickle.dumps({"W_enc": _Trap(str(trap))}))
    assert "not a readable safetensors file" in one_line_error(d)
    assert not trap.exists()


# ----------------------------------------------------------------------------- the splice


def test_splice_replaces_the_activation_with_the_reconstruction():
    model = tiny_gpt(seed=3)
    ids = torch.randint(0, 61, (2, 10), generator=torch.Generator().manual_seed(0))
    sae = SAE(SAEConfig(d_in=32, d_sae=64, k=5, hook_name=HOOK), torch.Generator().manual_seed(1))
    with torch.no_grad():
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(2))

    def by_hand(x, name):  # the SAE's arithmetic written out
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        top = pre.topk(5, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, top.values.relu())
        return f @ sae.W_dec + sae.b_dec

    with torch.no_grad():
        want = model.run_with_hooks(ids, fwd_hooks=[(HOOK, by_hand)])
        with sae_api.splice(model, sae):
            got = model.run_with_hooks(ids)
        plain = model.run_with_hooks(ids)
    assert torch.allclose(got, want, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)
    assert model.active_hooks is None  # nothing left installed


def test_splice_reads_heads_as_one_vector():
    model = tiny_gpt(seed=3)
    ids = torch.tensor([[1, 2, 3, 4]])
    z = "blocks.1.attn.hook_z"
    sae = SAE(SAEConfig(d_in=32, d_sae=8, k=8, hook_name=z), torch.Generator().manual_seed(1))
    assert sae_api.hook_width(model, z) == 32  # 2 heads x 16
    seen = []
    with torch.no_grad(), sae_api.splice(model, sae):
        model.run_with_hooks(ids, fwd_hooks=[(z, lambda x, name: seen.append(x))])
    _, cache = model.run_with_cache(ids, names=z)
    want = sae(cache[z].reshape(1, 4, 32)).reshape(1, 4, 2, 16)
    assert torch.allclose(seen[0], want, atol=1e-6)


def test_an_sae_that_does_not_fit_the_model_is_refused_naming_both():
    model = tiny_gpt()
    wide = SAE(SAEConfig(d_in=128, d_sae=8, k=2, hook_name=HOOK))
    with pytest.raises(MyGPT2Error, match=r"d_in=128 .* model's blocks.0.hook_resid_post holds 32"):
        sae_api.check_fits(model, wide)
    far = SAE(SAEConfig(d_in=32, d_sae=8, k=2, hook_name="blocks.7.hook_resid_post"))
    with pytest.raises(MyGPT2Error, match=r"lacks.*the model has 2 layers"):
        sae_api.check_fits(model, far)
    typo = SAE(SAEConfig(d_in=32, d_sae=8, k=2, hook_name="blocks.0.hook_resid_pots"))
    with pytest.raises(MyGPT2Error, match=r"Close names: blocks\.0\.hook_resid_post"):
        sae_api.check_fits(model, typo)
    pattern = SAE(SAEConfig(d_in=32, d_sae=8, k=2, hook_name="blocks.0.attn.hook_pattern"))
    with pytest.raises(MyGPT2Error, match="not one vector per token"):
        sae_api.check_fits(model, pattern)


# ----------------------------------------------------------------------------- the stream


def test_stream_stops_at_the_hook_and_resumes_from_two_integers():
    model = tiny_gpt(seed=4)
    ids = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(0))
    _, cache = model.run_with_cache(ids, names=HOOK)
    assert torch.equal(activations(model, HOOK, ids), cache[HOOK].reshape(-1, 32))

    tokens = torch.randint(0, 61, (1000,), generator=torch.Generator().manual_seed(1)).numpy()
    windows = TokenWindows(tokens, 10, seed=5)
    order = [windows.window(w)[0] for w in range(windows.n)]
    starts = sorted(int(tokens[i * 10]) for i in range(100))
    assert sorted(int(t) for t in order) == starts  # each window once per pass

    def stream():
        return ActivationStream(
            model, HOOK, windows, batch_size=7, model_batch=2, buffer_batches=3, seed=5
        )

    a = stream()
    batches = [a.next_batch() for _ in range(20)]  # 140 rows: crosses blocks of 60
    assert all(b.shape == (7, 32) for b in batches)
    b = stream()
    for _ in range(11):
        b.next_batch()
    c = stream()
    c.restore(b.state())
    assert all(torch.equal(c.next_batch(), want) for want in batches[11:])
    # the rows of one block are a shuffle of the block's windows' activations
    first_block = torch.cat(batches)[:60]
    direct = activations(model, HOOK, windows.batch(0, 6))
    assert torch.equal(first_block.sort(0).values, direct.sort(0).values)


# ----------------------------------------------------------------------------- the metrics


def test_reconstruction_figures_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    f = torch.tensor([[1.0, 0.0, 0.0], [0.5, 2.0, 0.0]])
    sums = ReconstructionSums()
    sums.add(x[:1], x_hat[:1], f[:1])  # in two batches: the same as one
    sums.add(x[1:], x_hat[1:], f[1:])
    got = sums.as_dict()
    # squared errors 0 + 1 + 1 + 0 = 2 over 4 elements; mean [2, 1], sum ||x - mean||^2 = 4
    assert got["l0"] == 1.5 and got["mse"] == 0.5
    assert got["explained_variance"] == pytest.approx(1 - 2 / 4)
    assert got["dead_fraction"] == pytest.approx(1 / 3) and got["dead_window_tokens"] == 2


def test_ce_loss_recovered_by_hand():
    losses = {"loss_clean": 2.0, "loss_spliced": 2.5, "loss_zero_ablated": 4.0}
    out = Evaluation({}, {**losses, "loss_mean_ablated": 3.0}, 10, 9).as_dict()
    assert out["loss_delta"] == 0.5
    assert out["ce_loss_recovered_zero"] == pytest.approx((4 - 2.5) / (4 - 2))
    assert out["ce_loss_recovered_mean"] == pytest.approx((3 - 2.5) / (3 - 2))


def mean_ce(logits: torch.Tensor, ids: torch.Tensor) -> float:
    logp = logits[:, :-1].log_softmax(-1)
    return float(-logp.gather(-1, ids[:, 1:, None]).mean())


def test_evaluate_against_the_models_own_forward():
    """A perfect SAE recovers everything, a zero SAE is the zero ablation, an SAE that
    always outputs the mean is the mean ablation; each loss is the model's own."""
    model = tiny_gpt(seed=6)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 61, (2, 12), generator=g) for _ in range(3)]
    ids = torch.cat(batches)
    with torch.no_grad():
        clean = mean_ce(model(ids)[0], ids)
        acts = model.run_with_cache(ids, names=HOOK)[1][HOOK].reshape(-1, 32)
        mean = acts.mean(0)
        zero = mean_ce(model.run_with_hooks(ids, [(HOOK, lambda x, n: torch.zeros_like(x))]), ids)
        mean_ablated = mean_ce(
            model.run_with_hooks(ids, [(HOOK, lambda x, n: mean.expand_as(x).contiguous())]), ids
        )

    perfect = SAE(SAEConfig(d_in=32, d_sae=64, architecture="standard", hook_name=HOOK))
    eye = torch.eye(32)
    with torch.no_grad():  # relu(x) - relu(-x) = x
        perfect.W_enc.copy_(torch.cat([eye, -eye], 1))
        perfect.W_dec.copy_(torch.cat([eye, -eye], 0))
        perfect.b_enc.zero_()
        perfect.b_dec.zero_()
    out = evaluate(model, perfect, batches).as_dict()
    assert out["loss_clean"] == pytest.approx(clean, abs=1e-5)
    assert out["loss_spliced"] == pytest.approx(clean, abs=1e-5)
    assert out["loss_zero_ablated"] == pytest.approx(zero, abs=1e-5)
    assert out["loss_mean_ablated"] == pytest.approx(mean_ablated, abs=1e-5)
    assert out["explained_variance"] == pytest.approx(1.0, abs=1e-6) and out["mse"] < 1e-10
    assert out["ce_loss_recovered_zero"] == pytest.approx(1.0, abs=1e-3)
    assert out["l0"] == pytest.approx(float((acts != 0).sum()) / acts.shape[0])
    assert out["tokens"] == 72 and out["predicted_tokens"] == 66
    assert math.isclose(out["loss_delta"], out["loss_spliced"] - out["loss_clean"])

    nothing = SAE(SAEConfig(d_in=32, d_sae=8, architecture="standard", hook_name=HOOK))
    with torch.no_grad():
        for p in nothing.parameters():
            p.zero_()
    out = evaluate(model, nothing, batches).as_dict()
    assert out["loss_spliced"] == pytest.approx(zero, abs=1e-5)
    assert out["ce_loss_recovered_zero"] == pytest.approx(0.0, abs=1e-4)
    assert out["dead_fraction"] == 1.0 and out["l0"] == 0.0
    # sum ||x - 0||^2 / sum ||x - mean||^2
    want_ev = 1 - float(acts.double().pow(2).sum()) / float((acts - mean).double().pow(2).sum())
    assert out["explained_variance"] == pytest.approx(want_ev, rel=1e-6)

    with torch.no_grad():
        nothing.b_dec.copy_(mean)  # (x - mean) @ 0 + 0 -> f = 0 -> x_hat = mean
    out = evaluate(model, nothing, batches).as_dict()
    assert out["loss_spliced"] == pytest.approx(mean_ablated, abs=1e-5)
    assert out["ce_loss_recovered_mean"] == pytest.approx(0.0, abs=1e-4)
    assert out["explained_variance"] == pytest.approx(0.0, abs=1e-5)
    # reconstructions from batches of a different size give the same figures
    again = evaluate(model, nothing, [ids]).as_dict()
    assert again["explained_variance"] == pytest.approx(out["explained_variance"], abs=1e-9)


def test_cross_entropy_helper_matches_torch():
    from mygpt2.sae.measure import next_token_loss

    logits = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0))
    ids = torch.randint(0, 7, (2, 5), generator=torch.Generator().manual_seed(1))
    total, n = next_token_loss(logits, ids)
    want = F.cross_entropy(logits[:, :-1].reshape(-1, 7), ids[:, 1:].reshape(-1))
    assert n == 8 and total / n == pytest.approx(float(want), abs=1e-6)
