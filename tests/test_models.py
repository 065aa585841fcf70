"""The model layer (bilevel/models): shapes, padding masks, functional use, second order.

Second order is checked through the oracle layer on tiny float64 models against dense
Hessians from ``torch.autograd.functional``, for the hyper-representation split (x = encoder,
y = head) and the whole-model split (x = embeddings, y = everything else: the HVP then goes
through the recurrent / attention kernels twice). Parameter counts of the papers' sizes are
checked against formulas written out here.
"""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bilevel import tree
from bilevel.models import (
    MODEL_KINDS,
    FrozenEmbedding,
    LinearHead,
    MLPHead,
    NLIModel,
    RNNEncoder,
    SentenceClassifier,
    TransformerEncoder,
    build_model,
    count_parameters,
    functional,
    split_params,
)
from bilevel.models.pooling import pool_time, valid_mask
from bilevel.models.recurrence import double_backward, in_double_backward, recurrence, supports
from bilevel.oracles import Batch, Oracles, second_order

DT = torch.float64
V = 11  # tiny vocabulary; id 0 is padding


@pytest.fixture(autouse=True)
def one_thread():
    """Hundreds of tiny kernels: one intra-op thread is faster, and robust on a shared CPU."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tokens(lengths, steps, seed=0, pad=0):
    """ids [B, steps]: random real tokens (1..V-1) before each length, ``pad`` after."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.as_tensor(lengths)
    ids = torch.randint(1, V, (len(lengths), steps), generator=gen)
    real = torch.arange(steps)[None, :] < lengths[:, None]
    return torch.where(real, ids, torch.as_tensor(pad)), lengths


def with_garbage_padding(ids, lengths, extra, seed=1):
    """The same sequences with ``extra`` more padding steps and random ids at every padding
    position (padding is defined by the lengths alone)."""
    gen = torch.Generator().manual_seed(seed)
    longer = torch.cat([ids, torch.zeros(ids.shape[0], extra, dtype=ids.dtype)], dim=1)
    real = torch.arange(longer.shape[1])[None, :] < lengths[:, None]
    return torch.where(real, longer, torch.randint(0, V, longer.shape, generator=gen))


def tiny_rnn(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, embed_dim=3, hidden=4, cell="lstm") | kw
    return RNNEncoder(**cfg).to(DT)


def tiny_transformer(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = dict(vocab_size=V, hidden=8, layers=1, heads=2, ffn=16, max_len=10) | kw
    return TransformerEncoder(**cfg).to(DT)


# -- shapes ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pool", ["max", "mean", "last"])
def test_rnn_encoder_shapes(cell, bidirectional, pool):
    enc = tiny_rnn(cell=cell, bidirectional=bidirectional, pool=pool, layers=2)
    ids, lengths = tokens([5, 2, 3], 5)
    out = enc(ids, lengths)
    assert out.shape == (3, enc.out_dim) == (3, 8 if bidirectional else 4)
    assert out.dtype == DT and torch.isfinite(out).all()
    assert enc(ids).shape == (3, enc.out_dim)  # no lengths: nothing is padding


def test_transformer_and_classifier_shapes():
    ids, lengths = tokens([6, 1, 4], 6)
    for pool in ("cls", "mean"):
        enc = tiny_transformer(pool=pool)
        assert enc(ids, lengths).shape == (3, 8)
    model = SentenceClassifier(tiny_transformer(), LinearHead(8, 6)).to(DT)
    assert model(ids, lengths).shape == (3, 6)
    mlp = MLPHead(8, [5, 4], 2, activation="relu")
    assert [type(m) for m in mlp] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert mlp(torch.randn(7, 8)).shape == (7, 2)
    with pytest.raises(ValueError, match="max_len"):
        tiny_transformer()(torch.ones(2, 11, dtype=torch.long))


def test_nli_model_shapes_and_one_encoder_call():
    torch.manual_seed(0)
    nli = NLIModel(tiny_rnn(), hidden_fc=[5], n_classes=3).to(DT)
    p, lp = tokens([4, 2, 3], 4, seed=0)
    h, lh = tokens([6, 1, 2], 6, seed=1)
    logits = nli(p, lp, h, lh)
    assert logits.shape == (3, 3)  # three classes, not the reference's 4096 outputs (Q7)
    # one padded call for both sentences == two calls, each on its own padding
    u, v = nli.encoder(p, lp), nli.encoder(h, lh)
    features = torch.cat([u, v, (u - v).abs(), u * v], dim=1)
    torch.testing.assert_close(logits, nli.head(features))
    # SLIP's layout: a linear projection (part of x there) before the MLP head
    slip = NLIModel(tiny_rnn(), hidden_fc=[5, 5], projection=6).to(DT)
    assert isinstance(slip.projection, nn.Linear) and slip.projection.out_features == 6
    assert slip(p, lp, h, lh).shape == (3, 3)


# -- padding ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pool", ["max", "mean", "last"])
def test_rnn_padding_cannot_change_the_output(cell, bidirectional, pool):
    enc = tiny_rnn(cell=cell, bidirectional=bidirectional, pool=pool, layers=2)
    ids, lengths = tokens([5, 2, 3, 1], 5)
    out = enc(ids, lengths)
    # more padding, and random ids at the padding positions
    torch.testing.assert_close(enc(with_garbage_padding(ids, lengths, 3), lengths), out)
    torch.testing.assert_close(enc(with_garbage_padding(ids, lengths, 0), lengths), out)
    # each sequence alone, unpadded, gives its own row
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(enc(ids[b : b + 1, :n], lengths[b : b + 1]), out[b : b + 1])


def test_transformer_padding_cannot_change_the_output():
    ids, lengths = tokens([6, 2, 4, 1], 6)
    for pool in ("cls", "mean"):
        enc = tiny_transformer(pool=pool)
        out = enc(ids, lengths)
        torch.testing.assert_close(enc(with_garbage_padding(ids, lengths, 3), lengths), out)
        torch.testing.assert_close(enc(with_garbage_padding(ids, lengths, 0), lengths), out)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(enc(ids[b : b + 1, :n], lengths[b : b + 1]), out[b : b + 1])
        # the mask matters: without lengths, the padding is attended to
        assert not torch.allclose(enc(ids), out)


def test_transformer_cls_id_is_prepended():
    ids, lengths = tokens([5, 3], 5)
    enc = tiny_transformer(cls_id=1)
    manual = torch.cat([torch.ones(2, 1, dtype=ids.dtype), ids], dim=1)
    plain = copy.deepcopy(enc)
    plain.cls_id = None
    torch.testing.assert_close(enc(ids, lengths), plain(manual, lengths + 1))


def test_pool_includes_padding_is_the_reference_pool():
    """Q26: the reference max-pools the padded output, whose padding positions are zeros: a
    sequence with padding gets max(masked max, 0); the reference mean is exact (sum / length)."""
    torch.manual_seed(0)
    masked = RNNEncoder(V, 3, 16, cell="rnn", pool="max").to(DT)
    quirk = copy.deepcopy(masked)
    quirk.pool_includes_padding = True
    ids, lengths = tokens([5, 2, 3, 5], 5)
    out, out_q = masked(ids, lengths), quirk(ids, lengths)
    padded = lengths < ids.shape[1]
    torch.testing.assert_close(out_q[padded], out[padded].clamp(min=0))
    torch.testing.assert_close(out_q[~padded], out[~padded])
    assert (out[padded] < 0).any()  # so the quirk really changes something here
    # appending padding changes the reference pool (rows that had none now see zeros)...
    more = with_garbage_padding(ids, lengths, 2)
    assert not torch.allclose(quirk(more, lengths), out_q)
    torch.testing.assert_close(quirk(more, lengths), out.clamp(min=0))
    # ...but never the masked one; and the pad ids never matter in either
    torch.testing.assert_close(masked(more, lengths), out)
    more2 = with_garbage_padding(ids, lengths, 2, seed=5)
    torch.testing.assert_close(quirk(more2, lengths), quirk(more, lengths))
    for m in (masked, quirk):
        m.pool = "mean"
    torch.testing.assert_close(quirk(more, lengths), masked(ids, lengths))


def test_max_pool_is_the_max_over_real_tokens_to_second_order():
    """The masked max-pool (padding as an added -inf) against each row's max over its own real
    tokens, in value, gradient and a Hessian-vector product through the pool (the path the
    second-order oracles take); a padding position larger than every real one must not leak."""
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(4, 6, 3, generator=gen, dtype=DT)
    lengths = torch.tensor([6, 2, 4, 1])
    out[1, 3:] = 10.0  # padding beats every real token: must be ignored
    mask = valid_mask(lengths, 4, 6, out.device)
    w = torch.randn(3, generator=gen, dtype=DT)
    v = torch.randn(out.shape, generator=gen, dtype=DT)

    def hvp(pool):
        z = out.clone().requires_grad_()
        loss = (pool(z).tanh() @ w).pow(2).sum()
        (g,) = torch.autograd.grad(loss, z, create_graph=True)
        (h,) = torch.autograd.grad(g, z, grad_outputs=v)
        return loss.detach(), g.detach(), h

    masked = hvp(lambda z: pool_time(z, mask, "max"))
    per_row = hvp(
        lambda z: torch.stack([z[b, : int(n)].max(0).values for b, n in enumerate(lengths)])
    )
    for a, b in zip(masked, per_row, strict=True):
        torch.testing.assert_close(a, b)
    assert masked[1][1, 3:].abs().sum() == 0 and masked[2].abs().sum() > 0
    # usable under torch.func.vmap (a batch of such batches, e.g. MAML tasks on an accelerator)
    stacked = torch.func.vmap(lambda o, k: pool_time(o, k, "max"))(
        out[None].repeat(2, 1, 1, 1), mask[None].repeat(2, 1, 1)
    )
    torch.testing.assert_close(stacked, pool_time(out, mask, "max")[None].repeat(2, 1, 1))


@pytest.mark.parametrize("cell", ["lstm", "rnn"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_rnn_encoder_equals_packed_reference(cell, bidirectional):
    """Masks instead of packing: the same numbers as the reference's sorted, packed nn.RNN/LSTM
    followed by a max-pool over the zero-padded output (with ``pool_includes_padding``)."""
    enc = tiny_rnn(cell=cell, bidirectional=bidirectional, layers=2, pool_includes_padding=True)
    cls = nn.LSTM if cell == "lstm" else nn.RNN
    ref = cls(3, 4, 2, bidirectional=bidirectional).to(DT)  # time-major, as the reference
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if not bidirectional:
                p.copy_(enc.rnn.get_parameter(name))
            else:  # weight_ih_l1_reverse -> rnn.1.bwd.weight_ih_l0
                kind, layer = name.removesuffix("_reverse").rsplit("_l", 1)
                d = "bwd" if name.endswith("_reverse") else "fwd"
                p.copy_(enc.rnn[int(layer)][d].get_parameter(f"{kind}_l0"))
    ids, lengths = tokens([4, 6, 2, 5], 6)
    emb = enc.embedding(ids).transpose(0, 1)  # (T, B, E)
    packed = nn.utils.rnn.pack_padded_sequence(emb, lengths, enforce_sorted=False)
    out = nn.utils.rnn.pad_packed_sequence(ref(packed)[0], total_length=6)[0]
    torch.testing.assert_close(enc(ids, lengths), out.max(dim=0).values)
    enc.pool, enc.pool_includes_padding = "mean", False
    torch.testing.assert_close(enc(ids, lengths), out.sum(0) / lengths[:, None].to(DT))


def test_frozen_and_pretrained_embeddings():
    table = torch.randn(V, 3, dtype=DT)
    frozen = RNNEncoder(V, 3, 4, embeddings=table).to(DT)  # frozen by default when given
    assert isinstance(frozen.embedding, FrozenEmbedding)
    assert "embedding.weight" not in dict(frozen.named_parameters())
    assert "embedding.weight" in frozen.state_dict()
    torch.testing.assert_close(frozen.embedding.weight, table)
    trainable = RNNEncoder(V, 3, 4, embeddings=table, freeze_embeddings=False)
    assert trainable.embedding.weight.requires_grad
    torch.testing.assert_close(trainable.embedding.weight, table)
    assert isinstance(RNNEncoder(V, 3, 4).embedding, nn.Embedding)  # random: trainable
    with pytest.raises(ValueError, match="shape"):
        RNNEncoder(V + 1, 3, 4, embeddings=table)


# -- functional use ---------------------------------------------------------------------------
def tiny_models():
    """(name, model, inputs, upper) for each kind of model, float64."""
    ids, lengths = tokens([5, 2, 3], 5)
    h, lh = tokens([3, 4, 1], 4, seed=3)
    out = []
    torch.manual_seed(0)
    rnn = build_model("rnn", n_classes=3, fc=[5], vocab_size=V, embed_dim=3, hidden=4, layers=2)
    out.append(("rnn", rnn.to(DT), (ids, lengths), "encoder"))
    tr = build_model(
        "transformer", n_classes=3, vocab_size=V, hidden=8, layers=1, heads=2, ffn=16, max_len=8
    )
    out.append(("transformer", tr.to(DT), (ids, lengths), "encoder"))
    nli = build_model(
        "nli_rnn", n_classes=3, fc=[4], projection=5, vocab_size=V, embed_dim=3, hidden=4,
        cell="rnn",
    )  # fmt: skip
    out.append(("nli_rnn", nli.to(DT), (ids, lengths, h, lh), ("encoder", "projection")))
    return out


@pytest.mark.parametrize("case", tiny_models(), ids=lambda c: c[0])
def test_functional_call_with_split_dicts(case):
    _, model, inputs, upper = case
    x, y = split_params(model, upper)
    names = [n for n, _ in model.named_parameters()]
    assert sorted([*x, *y]) == sorted(names) and not set(x) & set(y)
    assert x and y and all(n.startswith(upper) for n in x)
    for name, t in {**x, **y}.items():
        assert t.is_leaf and t.requires_grad
        assert t.data_ptr() != model.get_parameter(name).data_ptr()  # copies, not views
    f = functional(model)
    torch.testing.assert_close(f({**x, **y}, *inputs), model(*inputs))
    # the dicts, not the module's parameters, are what is used
    gen = torch.Generator().manual_seed(0)
    x2 = {k: v + 0.1 * torch.randn(v.shape, generator=gen, dtype=DT) for k, v in x.items()}
    moved = copy.deepcopy(model)
    moved.load_state_dict(tree.detach(x2), strict=False)
    out = f({**x2, **y}, *inputs)
    torch.testing.assert_close(out, moved(*inputs))
    assert not torch.allclose(out, model(*inputs))
    # a predicate works as well as prefixes
    xp, yp = split_params(model, lambda n: n.startswith(upper))
    assert list(xp) == list(x) and list(yp) == list(y)


def test_split_params_skips_frozen_tensors():
    model = build_model(
        "rnn", n_classes=2, vocab_size=V, embed_dim=3, hidden=4, embeddings=torch.randn(V, 3)
    )
    x, y = split_params(model, "encoder")
    assert "encoder.embedding.weight" not in x and set(y) == {"head.weight", "head.bias"}
    model.head.bias.requires_grad_(False)
    assert set(split_params(model, "encoder")[1]) == {"head.weight"}


def test_build_model_kinds_and_seeding():
    assert MODEL_KINDS == ("rnn", "nli_rnn", "transformer")
    cfg = dict(n_classes=2, vocab_size=V, embed_dim=3, hidden=4)
    a = build_model("rnn", generator=torch.Generator().manual_seed(3), **cfg)
    state = torch.random.get_rng_state()
    b = build_model("rnn", generator=torch.Generator().manual_seed(3), **cfg)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    c = build_model("rnn", generator=torch.Generator().manual_seed(4), **cfg)
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    torch.testing.assert_close(tree.flatten(pa), tree.flatten(pb))
    assert not torch.equal(a.head.weight, c.head.weight)
    assert isinstance(a.head, LinearHead) and isinstance(
        build_model("rnn", fc=[3], **cfg).head, MLPHead
    )
    with pytest.raises(ValueError, match="unknown model kind"):
        build_model("cnn", n_classes=2)
    with pytest.raises(TypeError):
        build_model("rnn", n_classes=2, vocab_size=V, embed_dim=3, hidden=4, heads=2)


def test_transformer_layers_start_independent():
    """nn.TransformerEncoder deep-copies one layer; the BERT init re-draws each one."""
    enc = tiny_transformer(layers=2)
    w0, w1 = (layer.self_attn.in_proj_weight for layer in enc.encoder.layers)
    assert not torch.equal(w0, w1)
    assert abs(float(w0.detach().std()) - 0.02) < 0.01
    assert not enc.token_embedding.weight[0].any()  # [PAD] row


# -- second order through the models ---------------------------------------------------------
class ModelTask:
    """g = CE(model; batch) + ½·reg‖y‖², f = CE(model; batch), with x ∪ y = model parameters."""

    def __init__(self, model, reg=0.01):
        self.f, self.reg = functional(model), reg

    def _ce(self, x, y, batch):
        inputs, labels = batch.data
        return F.cross_entropy(self.f({**x, **y}, *inputs), labels)

    def lower_loss(self, x, y, batch):
        return self._ce(x, y, batch) + 0.5 * self.reg * sum((v * v).sum() for v in y.values())

    def upper_loss(self, x, y, batch):
        return self._ce(x, y, batch)


def dense_blocks(loss, x, y):
    """(∇ᵧ, H_yy, H_xy) of ``loss(x, y)`` from a dense Hessian over the flattened (x, y)."""
    nx = tree.numel(x)

    def flat(z):
        return loss(tree.unflatten(z[:nx], x), tree.unflatten(z[nx:], y))

    z = torch.cat([tree.flatten(x), tree.flatten(y)]).detach()
    with second_order("cpu"):
        g = torch.autograd.functional.jacobian(flat, z)
        h = torch.autograd.functional.hessian(flat, z, vectorize=True)
    torch.testing.assert_close(h, h.T)
    return g[nx:], h[nx:, nx:], h[:nx, nx:]


def second_order_cases():
    """(name, model, inputs, upper): hyper-representation splits (y = head) and whole-model
    splits (x = embeddings: ∇²ᵧᵧg goes through the RNN / attention twice)."""
    cases = []
    for name, model, inputs, upper in tiny_models():
        cases.append((name + "-head", model, inputs, upper))
    ids, lengths = tokens([4, 2, 3], 4)
    torch.manual_seed(1)
    lstm = build_model("rnn", n_classes=3, vocab_size=V, embed_dim=3, hidden=4, bidirectional=True)
    cases.append(("bilstm-whole", lstm.to(DT), (ids, lengths), "encoder.embedding"))
    tr = build_model(
        "transformer", n_classes=3, vocab_size=V, hidden=8, layers=1, heads=2, ffn=8, max_len=6
    )
    cases.append(("transformer-whole", tr.to(DT), (ids, lengths), "encoder.token_embedding"))
    return cases


@pytest.mark.parametrize("case", second_order_cases(), ids=lambda c: c[0])
def test_oracles_through_models_match_dense(case):
    _, model, inputs, upper = case
    x, y = split_params(model, upper)
    labels = torch.tensor([0, 2, 1])
    batch = Batch((inputs, labels), 3)
    task = ModelTask(model)
    gy, h_yy, h_xy = dense_blocks(lambda a, b: task.lower_loss(a, b, batch), x, y)
    assert float(h_xy.norm()) > 1e-3 and float(h_yy.norm()) > 1e-3  # real coupling
    gen = torch.Generator().manual_seed(0)
    v = {k: torch.randn(t.shape, generator=gen, dtype=DT) for k, t in y.items()}
    vf = tree.flatten(v)
    oracles = Oracles(task)
    graph = oracles.lower_graph(x, y, batch)
    hv, jv = graph.hvp_cross(v)
    torch.testing.assert_close(tree.flatten(hv), h_yy @ vf, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(tree.flatten(jv), h_xy @ vf, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(tree.flatten(graph.grad), gy, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(
        tree.flatten(oracles.hvp(x, y, v, batch)), h_yy @ vf, rtol=1e-8, atol=1e-10
    )


def test_transformer_double_backward_needs_the_math_kernel():
    """Differentiating ∇ᵧg again w.r.t. attention parameters: the CPU's fused attention kernel
    has no double backward; inside ``second_order`` (math kernel) it works."""
    _, model, inputs, upper = second_order_cases()[-1]
    x, y = split_params(model, upper)
    assert any("self_attn" in k for k in y)
    task, batch = ModelTask(model), Batch((inputs, torch.tensor([0, 2, 1])), 3)

    def double_backward():
        yl = tree.leaves(y)
        params = list(yl.values())
        gy = torch.autograd.grad(task.lower_loss(x, yl, batch), params, create_graph=True)
        return torch.autograd.grad(gy, params, list(gy))

    with pytest.raises(RuntimeError, match="not implemented"):
        double_backward()
    with second_order("cpu"):
        assert all(torch.isfinite(t).all() for t in double_backward())


# -- the papers' sizes -------------------------------------------------------------------------
def linear(i, o):
    return i * o + o


def test_adambo_transformer_parameter_count():
    """BERT (hidden 768, 8 layers, 8 heads, FFN 2048), vocabulary 30522, 128 positions, + the
    Linear(768 -> 6) head. Built for real (initialisation only, no forward)."""
    d, f, L, vocab = 768, 2048, 8, 30522
    layer = linear(d, 3 * d) + linear(d, d) + linear(d, f) + linear(f, d) + 2 * 2 * d
    encoder = vocab * d + 128 * d + 2 * d + L * layer + linear(d, d)
    model = build_model(
        "transformer", n_classes=6, vocab_size=vocab, hidden=d, layers=L, heads=8, ffn=f
    )
    assert count_parameters(model.encoder) == encoder == 68_243_200
    assert count_parameters(model) == encoder + linear(d, 6) == 68_247_814
    # the reference BertModel: 512 positions and 2 token types (≈ 68M in x, spec §4.5)
    with torch.device("meta"):
        ref = TransformerEncoder(vocab, max_len=512, type_vocab_size=2)
    assert count_parameters(ref) == encoder + (512 - 128) * d + 2 * d == 68_539_648


def test_rnn_paper_parameter_counts():
    """Elman RNN 300 -> 4096, 2 layers; frozen embeddings are not parameters (spec B §4.0,
    A §2.1-2.2)."""
    e, h = 300, 4096
    rnn = (h * e + h * h + 2 * h) + (2 * h * h + 2 * h)
    mlp = linear(h, 1024) + linear(1024, 1024)
    cfg = dict(vocab_size=5, embed_dim=e, hidden=h, layers=2, cell="rnn", fc=[1024, 1024])
    with torch.device("meta"):
        table = torch.zeros(5, e)
        sent = build_model("rnn", n_classes=2, embeddings=table, **cfg)
        slip = build_model("nli_rnn", n_classes=3, embeddings=table, projection=h, **cfg)
        cfg["fc"] = []
        uni = build_model("nli_rnn", n_classes=3, embeddings=table, **cfg)
    assert count_parameters(sent.encoder) == rnn == 51_576_832
    assert count_parameters(sent) == rnn + mlp + linear(1024, 2) == 56_823_810  # A §2.1
    assert count_parameters(slip) == rnn + linear(4 * h, h) + mlp + linear(1024, 3) == 123_937_795
    # UniBiO/AccBO NLIRNN: the reference's 16384 -> 4096 logits (118,689,792, Q7) become -> 3
    assert rnn + linear(4 * h, h) == 118_689_792
    assert count_parameters(uni) == rnn + linear(4 * h, 3) == 51_625_987


@pytest.mark.parametrize("kind", ["rnn", "transformer"])
def test_any_encoder_reads_sentence_pairs(kind):
    """On a sentence-pair dataset (SNLI) every encoder goes into the siamese NLIModel: the
    transformer on SNLI hyper-representation used to call a one-sentence classifier with four
    inputs and fail."""
    cfg = dict(n_classes=3, vocab_size=V, hidden=8)
    cfg |= (
        {"heads": 2, "layers": 1, "ffn": 16, "max_len": 9}
        if kind == "transformer"
        else {"embed_dim": 4}
    )
    model = build_model(kind, pairs=True, generator=torch.Generator().manual_seed(0), **cfg)
    assert isinstance(model, NLIModel)
    g = torch.Generator().manual_seed(1)
    premise, hypothesis = (
        torch.randint(1, V, (5, 6), generator=g),
        torch.randint(1, V, (5, 4), generator=g),
    )
    lengths = torch.tensor([6, 5, 4, 3, 2]), torch.tensor([4, 4, 3, 2, 1])
    logits = model(premise, lengths[0], hypothesis, lengths[1])
    assert logits.shape == (5, 3) and torch.isfinite(logits).all()
    assert not isinstance(build_model(kind, **cfg), NLIModel)


# -- the O(T) second-order recurrence (bilevel.models.recurrence, issue #13) --------------------
@pytest.mark.parametrize(
    "module",
    [
        lambda: nn.RNN(3, 4, batch_first=True),
        lambda: nn.RNN(3, 4, batch_first=True, nonlinearity="relu"),
        lambda: nn.RNN(3, 4, batch_first=True, bias=False),
        lambda: nn.LSTM(3, 4, batch_first=True),
        lambda: nn.LSTM(3, 4, batch_first=True, bias=False),
    ],
    ids=["elman", "elman-relu", "elman-nobias", "lstm", "lstm-nobias"],
)
def test_recurrence_equals_the_module(module):
    torch.manual_seed(0)
    rnn = module().to(DT)
    assert supports(rnn)
    inputs = torch.randn(5, 7, 3, dtype=DT)
    torch.testing.assert_close(recurrence(rnn, inputs), rnn(inputs)[0])


def _encoder_hvp(enc, ids, lengths, v, loop: bool):
    """∇²ᵧᵧ of a scalar of the encoder (y = every parameter, embeddings included) times v, with the
    generic recurrence (``loop=False``) or the cell-by-cell one."""
    params = dict(enc.named_parameters())
    context = double_backward() if loop else contextlib.nullcontext()
    with context:
        out = torch.func.functional_call(enc, params, (ids, lengths))
        loss = (out.tanh() ** 2).sum()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    return torch.autograd.grad(grads, list(params.values()), grad_outputs=[v[k] for k in params])


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
@pytest.mark.parametrize("pool", ["max", "mean", "last"])
def test_second_order_recurrence_gives_the_same_hvp(cell, pool):
    enc = tiny_rnn(cell=cell, pool=pool, freeze_embeddings=False)
    ids, lengths = tokens([5, 2, 7, 4], 7)
    gen = torch.Generator().manual_seed(3)
    v = {k: torch.randn(p.shape, generator=gen, dtype=DT) for k, p in enc.named_parameters()}
    generic = _encoder_hvp(enc, ids, lengths, v, loop=False)
    looped = _encoder_hvp(enc, ids, lengths, v, loop=True)
    for a, b in zip(looped, generic, strict=True):
        torch.testing.assert_close(a, b)
    assert sum(float(a.norm()) for a in looped) > 1e-3


def _select_backwards(enc, ids, lengths, v, loop: bool) -> int:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _encoder_hvp(enc, ids, lengths, v, loop)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::select_backward")


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_second_order_recurrence_is_linear_in_length(cell):
    """The generic recurrence's double backward differentiates one select per time step, each
    zero-filling a [T, B, H] buffer (O(T²)); the cell-by-cell path has none. Inside the oracle
    layer's second_order context the encoder takes that path."""
    enc = tiny_rnn(cell=cell, freeze_embeddings=False)
    ids, lengths = tokens([12, 9, 12], 12)
    v = {k: torch.ones_like(p) for k, p in enc.named_parameters()}
    assert _select_backwards(enc, ids, lengths, v, loop=False) >= 12
    assert _select_backwards(enc, ids, lengths, v, loop=True) == 0
    with second_order("cpu"):
        assert in_double_backward()
    assert not in_double_backward()
