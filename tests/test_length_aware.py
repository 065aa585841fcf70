"""Length-aware batches (issue #13): a batch is cut to its longest sentence instead of the split's
width, and the models give the same logits and gradients on it (padding is masked), for every
encoder on single sentences and on SNLI pairs."""

from __future__ import annotations

import pytest
import torch

from bilevel.tasks.text import forward
from tests.text_tasks import build, needs_data


def test_gather_cuts_each_field_to_the_batch_longest():
    from bilevel.data.text import PaddedSplit

    ids = torch.tensor([[4, 5, 6, 0], [7, 0, 0, 0], [8, 9, 0, 0]])
    lengths, labels = torch.tensor([3, 1, 2]), torch.zeros(3, dtype=torch.long)
    split = PaddedSplit(
        {"text_ids": ids, "text_len": lengths, "label": labels, "index": torch.arange(3)}
    )

    def width(s: PaddedSplit, rows: list[int], trim: bool = True) -> int:
        return s.gather(torch.tensor(rows), trim=trim)["text_ids"].shape[1]

    assert split.gather(torch.tensor([1, 2]))["text_ids"].tolist() == [[7, 0], [8, 9]]
    assert (width(split, [1]), width(split, [1, 2], trim=False)) == (1, 4)
    assert width(split.to("cpu").with_labels(torch.ones(3)), [0]) == 3
    assert width(split.subset(torch.tensor([1, 2])), [0, 1]) == 2


CASES = [
    ("hypercleaning", "snli", "nli_rnn", []),
    ("hypercleaning", "snli", "rnn", ["model.bidirectional=true", "model.cell=rnn"]),
    ("hypercleaning", "snli", "transformer", []),
    ("hypercleaning", "sentiment140", "rnn", ["model.pool=mean"]),
    ("hypercleaning", "sentiment140", "transformer", []),
]


@needs_data
@pytest.mark.parametrize("task,dataset,model,extra", CASES, ids=[f"{c[1]}-{c[2]}" for c in CASES])
def test_trimmed_batches_give_the_same_logits_and_gradients(task, dataset, model, extra):
    t, _, _, state = build(f"task={task}", f"dataset={dataset}", f"model={model}", *extra,
                           "task.n_train=256", "task.max_len=48")  # fmt: skip
    idx = torch.randint(len(t.train), (64,), generator=torch.Generator().manual_seed(0))
    trimmed, full = t.train.gather(idx), t.train.gather(idx, trim=False)
    fields = t.data.fields
    assert trimmed[f"{fields[0]}_ids"].shape[1] < full[f"{fields[0]}_ids"].shape[1]
    run = forward(t.module)
    y = {k: v.detach().clone().requires_grad_(True) for k, v in state.y.items()}
    outs = []
    for batch in (trimmed, full):
        logits = run(y, fields, batch)
        grads = torch.autograd.grad(logits.square().mean(), list(y.values()))
        outs.append((logits.detach(), grads))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-6)
    for a, b in zip(outs[0][1], outs[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def _encoders(**kwargs):
    """(one padded batch, 3 length buckets) of the same encoder, float64 (no summation-order
    noise), the same weights."""
    from bilevel.models.rnn import RNNEncoder
    from bilevel.models.transformer import TransformerEncoder

    torch.manual_seed(0)
    if kwargs.pop("kind") == "transformer":
        make = lambda **k: TransformerEncoder(50, hidden=16, layers=2, heads=2, ffn=32, **k)  # noqa: E731
    else:
        make = lambda **k: RNNEncoder(50, 8, 16, layers=2, **k)  # noqa: E731
    one, bucketed = make(**kwargs).double(), make(length_buckets=3, **kwargs).double()
    bucketed.load_state_dict(one.state_dict())
    return one, bucketed


@pytest.mark.parametrize(
    "kwargs",
    [
        *(
            dict(kind="rnn", bidirectional=b, pool=p)
            for b in (False, True)
            for p in ("max", "mean", "last")
        ),
        dict(kind="transformer", pool="cls", cls_id=1),
        dict(kind="transformer", pool="mean"),
    ],
)
def test_length_buckets_give_the_same_vectors_and_second_order_gradients(kwargs):
    """CPU length buckets (sorted chunks, each cut to its own longest sentence) are a
    reordering of the same computation: sentence vectors, gradients and Hessian-vector products
    match the one padded batch."""
    from bilevel.models.pooling import length_buckets
    from bilevel.oracles import second_order

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (200,), generator=gen)
    lengths[7] = 0  # an empty sentence: one padding token, as in the reference
    ids = torch.randint(1, 50, (200, 30), generator=gen)
    one, bucketed = _encoders(**kwargs)
    assert length_buckets(ids, lengths, 3) is not None  # 3 chunks of >= 64 sentences

    def grads(model):
        params = [p for p in model.parameters() if p.requires_grad]
        with second_order():
            out = model(ids, lengths)
            g = torch.autograd.grad(out.square().sum(), params, create_graph=True)
            hv = torch.autograd.grad(sum(x.sum() for x in g), params)
        return [out, *g, *hv]

    for u, v in zip(grads(one), grads(bucketed), strict=True):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)


def test_length_buckets_stay_off_for_the_padding_quirk_and_small_batches():
    """Quirk Q26's max-pool over padding depends on the padded length: never bucketed; nor is
    a batch too small to split into chunks of MIN_BUCKET sentences."""
    from bilevel.models.pooling import MIN_BUCKET, length_buckets
    from bilevel.models.rnn import RNNEncoder

    ids, lengths = torch.ones(200, 30, dtype=torch.long), torch.arange(200) % 30
    quirk = RNNEncoder(50, 8, 16, pool_includes_padding=True, length_buckets=3)
    called = []
    quirk._encode = lambda i, n: called.append(len(i)) or torch.zeros(len(i), 16)
    quirk(ids, lengths)
    assert called == [200]
    assert length_buckets(ids[: 2 * MIN_BUCKET - 1], lengths[: 2 * MIN_BUCKET - 1], 4) is None
