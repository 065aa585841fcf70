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


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("pool", ["max", "mean", "last"])
def test_length_buckets_give_the_same_vectors_and_second_order_gradients(bidirectional, pool):
    """CPU length buckets (sorted chunks, each padded to its own longest) are a reordering of
    the same computation: sentence vectors, gradients and Hessian-vector products match the
    one padded batch."""
    from bilevel.models.rnn import RNNEncoder
    from bilevel.oracles import second_order

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 30, (200,), generator=gen)
    lengths[7] = 0  # an empty sentence: one padding token, as in the reference
    ids = torch.randint(1, 50, (200, 30), generator=gen)
    kwargs = dict(layers=2, bidirectional=bidirectional, pool=pool)
    torch.manual_seed(0)
    one = RNNEncoder(50, 8, 16, **kwargs).double()  # float64: no summation-order noise
    bucketed = RNNEncoder(50, 8, 16, length_buckets=3, **kwargs).double()
    bucketed.load_state_dict(one.state_dict())
    assert bucketed._buckets(ids, lengths) is not None  # 3 chunks of >= 64 sentences

    def grads(model):
        params = [p for p in model.parameters() if p.requires_grad]
        with second_order():
            out = model(ids, lengths)
            g = torch.autograd.grad(out.square().sum(), params, create_graph=True)
            hv = torch.autograd.grad(sum(x.sum() for x in g), params)
        return out, g, hv

    for a, b in zip(grads(one), grads(bucketed), strict=True):
        for u, v in zip(a if isinstance(a, tuple) else [a], b if isinstance(b, tuple) else [b]):
            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-10)
    # the quirk Q26 pool depends on the padded length: never bucketed
    assert (
        RNNEncoder(50, 8, 16, pool_includes_padding=True, length_buckets=3)._buckets(ids, lengths)
        is None
    )
