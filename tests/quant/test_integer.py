"""The integer-only executor agrees with fake-quant on a trained network."""

import pytest
import torch
from torch import nn

from hqbench.quant import quantize

from .conftest import make_dataset


@pytest.mark.parametrize("method", ["A", "B", "C", "D"])
def test_integer_path_agrees_with_fake_quant(trained_net, calib_batches, method):
    net, float_acc = trained_net
    assert float_acc > 0.85  # the network really learned something
    x, y = make_dataset(512, seed=2)
    q = quantize(net, calib_batches, method=method)
    with torch.no_grad():
        fake = q(x)
    integer = q.integer_executor()(x)
    logits = q.quantizer("head")
    fake_q, int_q = torch.round(fake / logits.scale), torch.round(integer / logits.scale)
    assert (fake.argmax(1) == integer.argmax(1)).float().mean() >= 0.99
    assert ((fake_q - int_q).abs() <= 1).float().mean() >= 0.999
    assert (integer.argmax(1) == y).float().mean() >= float_acc - 0.03


def test_multi_output_ops_are_refused_by_name():
    """A consumer of one chunk of torch.chunk cannot be replayed: say which op, not a TypeError."""
    from hqbench.quant import quantize

    class Split(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 1)

        def forward(self, x):
            a, b = torch.chunk(self.conv(x), 2, dim=1)
            return a * b

    qmodel = quantize(Split().eval(), [torch.randn(2, 2, 4, 4)], method="B")
    with pytest.raises(NotImplementedError, match="chunk"):
        qmodel.integer_executor()
