"""Block reconstruction (adaround.granularity=block): the blocks found in a recorded graph, their
replay against the model itself, and what rounding a block together buys."""

import warnings

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v2, resnet18

from hqbench.quant import prepare, quantize
from hqbench.quant.adaround import _capture_points, adaround_weights
from hqbench.quant.samples import _BlockSamples
from hqbench.quant.blocks import BlockReplay, block_reach, find_blocks
from hqbench.quant import AdaRoundSettings, Recipe


def _float_model(model: nn.Module, size: int = 64):
    torch.manual_seed(0)
    q = prepare(model.eval(), (torch.randn(2, 3, size, size),), "B")
    q.set_mode("float")
    return q


def _owners(blocks) -> list[list[str]]:
    """Each block's layers by the torchvision module that holds them (``features.3``, ``layer2.0``)."""
    return [sorted({".".join(n.split(".")[:2]) for n in b.layers}) for b in blocks]


@pytest.mark.parametrize("build", [mobilenet_v2, resnet18])
def test_blocks_are_the_architectures_own_residual_blocks(build):
    """No list of block types: the cuts alone find torchvision's InvertedResidual and BasicBlock
    (the stem joins the first block, the classifier ends the last or stands alone)."""
    q = _float_model(build())
    blocks = find_blocks(q.graph, q.plan)
    assert [n for b in blocks for n in b.layers] == q.plan.compute  # every layer once, in execution order
    if build is mobilenet_v2:
        expected = [["features.0", "features.1"]] + [[f"features.{i}"] for i in range(2, 18)]
        expected.append(["classifier.1", "features.18"])
    else:
        expected = [["conv1", "layer1.0"]] + [[f"layer{i}.{j}"] for i in range(1, 5) for j in range(2)][1:] + [["fc"]]
    assert _owners(blocks) == expected


@pytest.mark.parametrize("build", [mobilenet_v2, resnet18])
def test_a_replayed_block_gives_the_models_own_output(build):
    q = _float_model(build())
    batches = [torch.randn(3, 3, 64, 64)]
    modules = dict(q.model.named_modules())
    params = {n: (modules[n].weight.detach(), modules[n].bias) for n in q.plan.compute}
    for block in find_blocks(q.graph, q.plan):
        seen = _capture_points(q, batches, lambda b: (b,), [block.start, block.end], block.end)
        out = BlockReplay(block, modules)(seen[block.start][0], params)
        torch.testing.assert_close(out, seen[block.end][0], rtol=1e-4, atol=1e-5)


def test_the_residual_nets_blocks_end_at_its_joins_and_its_classifier(trained_net):
    q = prepare(trained_net[0], (torch.randn(2, 1, 16, 16),), "B")
    blocks = find_blocks(q.graph, q.plan)
    assert [(b.start, b.end, b.layers) for b in blocks] == [
        ("input0", ":add0", ["stem.0", "expand.0", "project.0"]),
        (":add0", ":cat0", ["branch_a.0", "branch_b.0"]),
        (":cat0", "head", ["head"]),
    ]


def _block_error(q, batches, block, rounded=None):
    """Squared error at a block's end: the quantized model (act. quant included) against float."""
    q.set_mode("float")
    y = torch.cat(_capture_points(q, batches, lambda b: (b[0],), [block.end], block.end)[block.end])
    q.rounded_weights = rounded.weights if rounded else {}
    q.set_mode("quant")
    out = torch.cat(_capture_points(q, batches, lambda b: (b[0],), [block.end], block.end)[block.end])
    return float(((out - y) ** 2).mean())


def test_rounding_a_block_together_lowers_its_output_error(trained_net, calib_batches):
    """At 3-bit weights the first block (stem, expand, project) ends closer to float after block
    reconstruction than after round-to-nearest, on the calibration data it learned from."""
    q = quantize(trained_net[0], calib_batches, "D", recipe=Recipe(weight_bits=3))
    block = find_blocks(q.graph, q.plan)[0]
    nearest = _block_error(q, calib_batches, block)
    q.set_mode("quant")
    rounded = adaround_weights(q, calib_batches, settings=AdaRoundSettings(iters=300, granularity="block"))
    assert _block_error(q, calib_batches, block, rounded) < 0.7 * nearest


class BatchBound(nn.Module):
    """A block with a reshape to the recording's batch size: replaying it on other batches is wrong."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(1, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1), nn.Linear(64, 3)
        self.batch = 2

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = x + self.b(x)
        return self.head(x.reshape(self.batch, -1))  # breaks on any batch but 2 once recorded


def test_a_block_that_does_not_replay_is_rounded_layer_by_layer_with_a_warning():
    torch.manual_seed(0)
    model = BatchBound().eval()
    q = quantize(model, [torch.randn(2, 1, 4, 4)], "B", recipe=Recipe(weight_bits=4))  # records and calibrates at batch 2
    with pytest.warns(UserWarning, match="does not replay as the model runs it; its layers are rounded one at a time"):
        rounded = adaround_weights(q, [torch.randn(2, 1, 4, 4)], lambda b: (b,),
                                   AdaRoundSettings(iters=5, granularity="block"))
    assert set(rounded.weights) == set(q.plan.compute)


def test_every_layer_gets_a_rounding_at_either_granularity(trained_net, calib_batches):
    q = quantize(trained_net[0], calib_batches, "D", recipe=Recipe(weight_bits=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every block of this net replays
        rounded = adaround_weights(q, calib_batches, settings=AdaRoundSettings(iters=3, granularity="block"))
    assert list(rounded.weights) == q.plan.compute
    for name, w in rounded.weights.items():
        scale = q.weight_scale(name)
        torch.testing.assert_close(torch.round(w / scale) * scale, w)  # on the layer's grid


class TFLiteLike(nn.Module):
    """TF SAME padding as a separate asymmetric ZeroPad2d before an unpadded stride-2 conv, and a
    stride-1 residual block after it."""

    def __init__(self):
        super().__init__()
        self.pad, self.down = nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, stride=2)
        self.act = nn.ReLU6()
        self.expand, self.dw = nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.project, self.act2 = nn.Conv2d(16, 8, 1), nn.ReLU6()

    def forward(self, x):
        x = self.act(self.down(self.pad(x)))
        return x + self.project(self.act2(self.dw(self.expand(x))))


@pytest.mark.parametrize("build, size, window", [(mobilenet_v2, 64, 5), (TFLiteLike, 30, 4), (resnet18, 64, 3)])
def test_a_crop_of_a_blocks_input_replays_to_exactly_that_patch_of_its_output(build, size, window):
    """Every offset, borders included: the crop cut at the block's stride, padded as the model
    pads, gives the patch the whole map gives."""
    q = _float_model(build(), size)
    modules = dict(q.model.named_modules())
    params = {n: (modules[n].weight.detach(), modules[n].bias) for n in q.plan.compute}
    cropped = 0
    for block in find_blocks(q.graph, q.plan):
        seen = _capture_points(q, [torch.randn(2, 3, size, size)], lambda b: (b,), [block.start, block.end], block.end)
        x, y = seen[block.start][0], seen[block.end][0]
        samples = _BlockSamples(BlockReplay(block, modules), x, y, window, block_reach(block, modules))
        if samples.reach is None:
            continue
        cropped += 1
        (h, w), (ph, pw) = y.shape[2:], samples.size
        for oy in range(h - ph + 1):
            for ox in range(w - pw + 1):
                crop, (ky, kx) = samples.crop(x, (oy, ox))
                out = samples.replay(crop, params)[:, :, ky: ky + ph, kx: kx + pw]
                torch.testing.assert_close(out, y[:, :, oy: oy + ph, ox: ox + pw], rtol=1e-4, atol=1e-5)
    assert cropped >= (1 if build is TFLiteLike else 4)


@pytest.mark.parametrize("granularity", ["layer", "block"])
def test_adaround_runs_under_inference_mode(trained_net, calib_batches, granularity):
    """Lightning tests in inference mode; AdaRound's autograd must not meet an inference tensor."""
    q = quantize(trained_net[0], calib_batches, "D", recipe=Recipe(weight_bits=4))
    with torch.inference_mode():
        rounded = adaround_weights(q, calib_batches, settings=AdaRoundSettings(iters=3, granularity=granularity))
    assert list(rounded.weights) == q.plan.compute
