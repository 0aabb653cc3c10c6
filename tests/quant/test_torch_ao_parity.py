"""A, B and C give the same qparams as torch.ao's observers on the same batches."""

import pytest
import torch
from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver, MovingAverageMinMaxObserver

from hqbench.quant import QuantGrid, create_calibrator, range_to_qparams

OBSERVERS = {"A": MovingAverageMinMaxObserver, "B": MinMaxObserver, "C": HistogramObserver}


def _batches(kind: str):
    g = torch.Generator().manual_seed(7)
    out = []
    for i in range(5):
        x = torch.randn(4, 16, 8, 8, generator=g) * (1 + i) + 0.3 * i
        out.append(torch.relu(x) if kind == "relu" else x)
    return out


@pytest.mark.parametrize("method", ["A", "B", "C"])
@pytest.mark.parametrize("kind,signed", [("signed", True), ("relu", False)])
def test_same_qparams_as_torch_ao(method, kind, signed):
    grid = QuantGrid(8, signed=signed)
    dtype = torch.qint8 if signed else torch.quint8
    observer = OBSERVERS[method](dtype=dtype, qscheme=torch.per_tensor_affine, quant_min=grid.qmin, quant_max=grid.qmax)
    calibrator = create_calibrator(method)
    for x in _batches(kind):
        observer(x)
        calibrator.observe(x)
    ref_scale, ref_zp = observer.calculate_qparams()
    scale, zp = range_to_qparams(*calibrator.compute_range(grid), grid)
    assert torch.allclose(scale, ref_scale.reshape(()), rtol=1e-6), (scale, ref_scale)
    assert int(zp) == int(ref_zp)


@pytest.mark.parametrize("kind", ["signed", "relu"])
def test_pytorch_column_through_hooks_matches_torch_x86_default(kind):
    """The detector's PyTorch column: calibrator C on TORCH_X86_ACT_GRID gives the qparams of torch's
    default x86 activation observer, HistogramObserver(reduce_range=True) on quint8."""
    from hqbench.quant import TORCH_X86_ACT_GRID

    observer = HistogramObserver(dtype=torch.quint8, reduce_range=True)
    calibrator = create_calibrator("C")
    for x in _batches(kind):
        observer(x)
        calibrator.observe(x)
    ref_scale, ref_zp = observer.calculate_qparams()
    scale, zp = range_to_qparams(*calibrator.compute_range(TORCH_X86_ACT_GRID), TORCH_X86_ACT_GRID)
    assert TORCH_X86_ACT_GRID.describe() == "0..127"
    assert torch.allclose(scale, ref_scale.reshape(()), rtol=1e-6), (scale, ref_scale)
    assert int(zp) == int(ref_zp)
