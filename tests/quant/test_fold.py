import torch
from torch import nn

from hqbench.quant.fold import fold_batchnorm, unfold_batchnorm


def _net_with_trained_bn():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.1, 3)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    return net.eval()


def test_folding_is_exact_and_undoable():
    net = _net_with_trained_bn()
    x = torch.randn(4, 3, 12, 12)
    ref = net(x)
    records = fold_batchnorm(net, [("0", "1"), ("3", "4")])
    assert isinstance(net[1], nn.Identity) and isinstance(net[4], nn.Identity)
    folded = net(x)
    rel = ((folded - ref).norm() / ref.norm()).item()  # float32 conv rounding is all that differs
    assert rel < 1e-5, rel
    unfold_batchnorm(records)
    assert isinstance(net[1], nn.BatchNorm2d) and net[0].bias is None
    assert torch.equal(net(x), ref)
