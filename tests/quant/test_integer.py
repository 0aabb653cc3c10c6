"""The integer-only executor agrees with fake-quant on a trained network."""

import copy

import pytest
import torch
from torch import nn

from hqbench.quant import quantize
from hqbench.quant.integer import IntegerExecutor

from .conftest import make_dataset


@pytest.mark.parametrize("method", ["A", "B", "C", "D"])
def test_integer_path_agrees_with_fake_quant(trained_net, calib_batches, method):
    net, float_acc = trained_net
    assert float_acc > 0.85  # the network really learned something
    x, y = make_dataset(512, seed=2)
    q = quantize(net, calib_batches, method=method)
    with torch.no_grad():
        fake = q(x)
    integer = IntegerExecutor(q)(x)
    logits = q.quantizer("head")
    fake_q, int_q = torch.round(fake / logits.scale), torch.round(integer / logits.scale)
    assert (fake.argmax(1) == integer.argmax(1)).float().mean() >= 0.99
    assert ((fake_q - int_q).abs() <= 1).float().mean() >= 0.999
    assert (integer.argmax(1) == y).float().mean() >= float_acc - 0.03


@pytest.mark.parametrize("method", ["B", "D"])
def test_fake_quant_in_float64_rounds_exactly_as_the_integer_kernels(trained_net, calib_batches, method):
    """In float64 the fake-quant sums are exact, so it rounds the very values the integer executor
    rounds: the logits' integers are equal (in float32 some land 1 LSB apart)."""
    net, _ = trained_net
    x, _ = make_dataset(512, seed=2)
    q = quantize(copy.deepcopy(net), calib_batches, method=method)
    q.model.double()
    q.set_mode("quant")  # re-derive the fake-quant weights and biases in float64
    with torch.no_grad():
        fake = q(x.double())
    integer = IntegerExecutor(q)(x.double())
    scale = q.quantizer("head").scale.double()
    assert fake.dtype == torch.float64
    assert (torch.round(fake / scale) == torch.round(integer / scale)).float().mean() >= 0.999


def test_requantize_keeps_31_bits_for_small_multipliers():
    """``s_in * s_w / s_out`` can be ~1e-5: a fixed 31-bit shift would keep only ~15 bits of it and
    round values near .5 the wrong way; the normalised multiplier matches exact rounding."""
    from hqbench.quant.integer import requantize

    g = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**24), 2**24, (200_000,), generator=g).double()
    m = torch.tensor(3.0517578125e-05 * 1.2345)
    exact = torch.clamp(torch.round(acc * m.double()), -(2**20), 2**20)
    assert torch.equal(requantize(acc, m, -(2**20), 2**20), exact)
    # Exact ties (odd accumulators halved) round to even, as torch.round and ONNX Runtime do.
    odd = torch.arange(-9, 10, 2).double()
    assert torch.equal(requantize(odd, torch.tensor([0.5, 0.25]).reshape(2, 1), -100, 100),
                       torch.round(odd * torch.tensor([[0.5], [0.25]], dtype=torch.float64)))


class _Decoder(nn.Module):
    """A detector head's shape: convs on integers, then a float decoding that splits a tensor
    (chunk), builds a grid (meshgrid) and reshapes with the batch size read from the input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.head = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.head(torch.relu(self.conv(x)))
        a, b = torch.chunk(y, 2, dim=1)
        gy, gx = torch.meshgrid(torch.arange(y.shape[2]).to(y), torch.arange(y.shape[3]).to(y), indexing="ij")
        grid = torch.stack((gx, gy)).view(1, 2, y.shape[2], y.shape[3])
        return (a * b + grid).view(y.shape[0], 2, -1)  # the batch size becomes a recorded constant


def test_multi_output_ops_and_batch_constants_replay_on_any_batch():
    """Each consumer of one element of chunk/meshgrid gets that element, and a graph whose
    constants hold the recorded batch size runs other batch sizes in recorded-size chunks, padded:
    the integer executor agrees with fake-quant at the recorded batch and around it."""
    torch.manual_seed(0)
    calib = [torch.randn(4, 2, 6, 5) for _ in range(2)]
    qmodel = quantize(_Decoder().eval(), calib, method="B")
    executor = IntegerExecutor(qmodel)
    assert executor.batch == 4  # found by recording once more at batch 5
    for n in (4, 1, 3, 9):
        x = torch.randn(n, 2, 6, 5)
        with torch.no_grad():
            fake = qmodel(x)
        integer = executor(x)
        assert integer.shape == fake.shape == (n, 2, 30)
        # the same integers in a and b (a 1-LSB difference would move a*b by ~0.01); the grid added alike
        assert ((integer - fake).abs() <= 1e-4).float().mean() >= 0.99, n
    with pytest.raises(ValueError, match=r"recorded input shape \[\(2, 6, 5\)\].*got \[\(2, 6, 6\)\]"):
        executor(torch.randn(2, 2, 6, 6))


def test_a_graph_without_batch_constants_replays_any_batch_at_once(trained_net, calib_batches):
    net, _ = trained_net
    assert IntegerExecutor(quantize(net, calib_batches, method="B")).batch is None


def test_functional_leaky_relu_keeps_its_own_slope():
    """F.leaky_relu(x, 0.3) after a conv: the integer kernel's negative-side multiplier is 0.3, not
    the module default 0.01 (the executor read the slope only from modules)."""
    from torch.nn import functional as F

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.Linear(8, 4)

        def forward(self, x):
            return self.fc(F.leaky_relu(self.conv(x), 0.3).mean((2, 3)))

    torch.manual_seed(0)
    q = quantize(Net().eval(), [torch.randn(4, 3, 8, 8) for _ in range(3)], "B")
    x = torch.randn(8, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(IntegerExecutor(q)(x), q(x), atol=1e-4, rtol=0)
