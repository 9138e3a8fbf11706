"""The in-memory loader: deterministic, complete, textbook scaling."""

import pytest
import torch

from bnlab.data import BatchLoader
from tests.data.fakes import fake_arrays


def loader(**kw):
    images, labels = fake_arrays(1000, 0)
    return BatchLoader(images, labels.long(), **{"batch_size": 256, **kw})


def test_same_seed_same_batches_and_epochs_differ():
    a = [y for _, y in loader(seed=3).batches(0)]
    b = [y for _, y in loader(seed=3).batches(0)]
    c = [y for _, y in loader(seed=3).batches(1)]
    d = [y for _, y in loader(seed=4).batches(0)]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(torch.cat(a), torch.cat(c)) and not torch.equal(torch.cat(a),
                                                                           torch.cat(d))


def test_every_example_once_and_last_partial_batch_kept():
    ld = loader()
    order = ld.order(5)
    assert sorted(order.tolist()) == list(range(1000))
    sizes = [y.shape[0] for _, y in ld.batches(5)]
    assert sizes == [256, 256, 256, 232] and len(ld) == 4 and ld.num_examples == 1000


def test_drop_last():
    ld = loader(drop_last=True)
    assert [y.shape[0] for _, y in ld.batches(0)] == [256, 256, 256] and ld.num_examples == 768


def test_scaling_like_to_tensor_and_shapes():
    images, labels = fake_arrays(10, 0)
    ld = BatchLoader(images, labels.long(), 10, shuffle=False)
    x, y = next(iter(ld))
    assert x.shape == (10, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], images.float() / 255)


def test_normalization():
    images, labels = fake_arrays(10, 0)
    ld = BatchLoader(images, labels.long(), 10, shuffle=False, mean=0.5, std=0.25)
    x, _ = next(iter(ld))
    torch.testing.assert_close(x[:, 0], (images.float() / 255 - 0.5) / 0.25)


@pytest.mark.parametrize("kw,match", [({"batch_size": 0}, "batch_size"),
                                      ({"mean": 0.5}, "both mean")])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        loader(**kw)
