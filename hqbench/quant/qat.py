"""Quantization-aware training of a calibrated :class:`~hqbench.quant.model.QuantizedModel`.

:class:`QuantTraining` starts from the qparams a calibrator froze and trains the network through its
fake-quant: activations and weights round in the forward pass and pass gradients straight through
(zero outside the clip range); with ``learn_scales`` every activation scale and every per-channel
weight scale is a parameter trained by LSQ's gradient (Esser et al., "Learned Step Size
Quantization", ICLR 2020). Zero points stay as calibrated, so the hybrid scheme's grids are kept.

BatchNorm stays folded, as :func:`~hqbench.quant.prepare` folded it: training updates the folded
weights and biases, which is training with BN's statistics frozen from the first step (Krishnamoorthi
2018 freezes them after a while; on a few thousand images their batch estimates are noise anyway).

:meth:`QuantTraining.float_state_dict` writes the trained network back in the model's own layout
(each folded BN as an identity-like BN holding the trained bias), so checkpoints load into a fresh
model, and :func:`~hqbench.quant.prepare` folds it back to the same weights. :meth:`finish` returns
the model to post-training quant mode with what was learnt: the integer executor, the ONNX export
and every engine run it as they run a calibrated model.
"""

from __future__ import annotations

import torch
from torch import nn

from .fake import QUANT
from .grid import _EPS
from .model import QuantizedModel
from .profiles import get_profile
from .recipe import Recipe


class _WeightFakeQuant(nn.Module):
    """What a layer's weight goes through while training: symmetric per-channel (or
    per-tensor) fake-quant on ``bits`` bits with straight-through gradients; the scale learnt or fixed."""

    def __init__(self, scale: torch.Tensor, bits: int, learn: bool):
        super().__init__()
        self.qmax = 2 ** (bits - 1) - 1
        self.shape = tuple(scale.shape)
        flat = scale.detach().reshape(-1).clamp(min=_EPS)
        if learn:  # in the log domain, as the activations' (see ActQuantizer.start_training)
            self.log_scale = nn.Parameter(flat.log())
        else:
            self.register_buffer("fixed_scale", flat.clone())

    @property
    def scale(self) -> torch.Tensor:
        log_scale = self._parameters.get("log_scale")
        return self.fixed_scale if log_scale is None else log_scale.exp().clamp(min=_EPS)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        scale = self.scale
        if not scale.requires_grad or not torch.is_grad_enabled():
            scale = scale.detach().reshape(self.shape)
            w = weight.float()
            return (torch.clamp(torch.round(w / scale), -self.qmax, self.qmax) * scale
                    + (w - w.detach())).to(weight.dtype)  # the grid's value, the gradient straight through
        factor = 1.0 / (weight.numel() / scale.numel() * self.qmax) ** 0.5  # LSQ's gradient scale
        scale = scale.float()  # torch's learnable fake-quant takes float32 scales only (a float64 model's too)
        zero = torch.zeros_like(scale)
        if scale.numel() == 1:
            return torch._fake_quantize_learnable_per_tensor_affine(weight.float(), scale, zero, -self.qmax, self.qmax,
                                                                    factor).to(weight.dtype)
        return torch._fake_quantize_learnable_per_channel_affine(weight.float(), scale, zero, 0, -self.qmax, self.qmax,
                                                                 factor).to(weight.dtype)


class _BiasFakeQuant(nn.Module):
    """A layer's bias as the integer kernel adds it: int32 at the input's scale times the weight's
    (:meth:`QuantizedModel.set_mode`), with the gradient straight through. At 4 bits that grid is
    coarse enough to matter, so training sees it too."""

    def __init__(self, input_quantizer: nn.Module, weight: _WeightFakeQuant):
        super().__init__()
        self.input_quantizer, self.weight = [input_quantizer], [weight]  # lists: not submodules

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        s_acc = (self.input_quantizer[0].scale.detach() * self.weight[0].scale.detach().reshape(-1)).double()
        b = bias.double()
        return (b + (torch.round(b / s_acc) * s_acc - b).detach()).to(bias.dtype)


class _Swap:
    """For the duration of one forward, a layer's weight and bias are their fake-quantized values.

    The float parameters stay registered under their own names between forwards (state dicts,
    optimizers and DDP see them unchanged) and are swapped for the quantized tensors in
    ``_parameters`` only while the layer runs, as ``torch.func.functional_call`` does. A torch
    parametrization would re-register the parameter (``set_``), and DDP, which wrapped the model
    before ``fit`` began, would no longer reduce its gradient.
    """

    def __init__(self, module: nn.Module, quantized: dict[str, nn.Module]):
        self.quantized, self.held = quantized, {}
        self.handles = [module.register_forward_pre_hook(self.swap_in),
                        module.register_forward_hook(self.swap_out, always_call=True)]

    def swap_in(self, module: nn.Module, args) -> None:
        for name, fq in self.quantized.items():
            self.held[name] = module._parameters[name]
            module._parameters[name] = fq(self.held[name])

    def swap_out(self, module: nn.Module, args, output) -> None:
        module._parameters.update(self.held)
        self.held = {}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def check_learnable(recipe: Recipe, learn_scales: bool) -> None:
    """Learnt scales are no powers of two: refused under a profile that stores those.

    Raises:
        ValueError: ``learn_scales`` with such a profile, naming both.
    """
    if learn_scales and get_profile(recipe.profile).pow2:
        raise ValueError(f"profile={recipe.profile} stores power-of-two scales, which learnt scales are not: "
                         "train with fixed scales (learn_scales=False, train.learn_scales=false)")


class QuantTraining:
    """A calibrated model switched to quantization-aware training (see the module's docstring).

    Args:
        qmodel: a calibrated :class:`QuantizedModel` (quant mode, or float after calibration).
        learn_scales: train activation and weight scales (LSQ); False keeps them as calibrated.

    :attr:`parameters` are the trainable tensors the model did not have before: the biases folding
    gave to bias-less layers and the learnt scales. An optimizer built on the model beforehand must
    be given them (:meth:`torch.optim.Optimizer.add_param_group`).

    Raises:
        ValueError: the recipe carries weight-side post-training methods (AdaRound, bias correction):
            training replaces them.
    """

    def __init__(self, qmodel: QuantizedModel, learn_scales: bool = True):
        if qmodel.recipe.fits_weights or qmodel.rounded_weights or qmodel.bias_shift:
            raise ValueError("quantization-aware training trains the weights itself: use a recipe without "
                             "AdaRound (weight_rounding) and bias_correction")
        if qmodel.act_bits > 8 or qmodel._act_grid is not None:
            raise ValueError("quantization-aware training runs hqbench's own grids at up to 8 bits")
        for q in qmodel.quantizers.values():
            q.check_calibrated()
        check_learnable(qmodel.recipe, learn_scales)
        self.qmodel, self.learn_scales = qmodel, bool(learn_scales)
        qmodel.set_mode("float")  # the folded float weights back in their layers
        self.parameters: list[nn.Parameter] = [r.conv.bias for r in qmodel._folds if not r.had_bias]
        modules = dict(qmodel.model.named_modules())
        self._weights: dict[str, _WeightFakeQuant] = {}
        self._swaps: list[_Swap] = []
        for name in qmodel.plan.compute:
            module, bits = modules[name], qmodel.layer_weight_bits(name)
            scale = qmodel.learned_scales.get(name)
            if scale is None:
                scale = qmodel.base_weight_scale(module.weight.detach(), bits)
            fq = _WeightFakeQuant(scale.to(module.weight), bits, self.learn_scales)
            quantized = {"weight": fq}
            if module.bias is not None:
                quantized["bias"] = _BiasFakeQuant(qmodel.quantizer(qmodel.plan.compute_inputs[name]), fq)
            self._swaps.append(_Swap(module, quantized))
            self._weights[name] = fq
            if self.learn_scales:
                self.parameters.append(fq.log_scale)
        for q in qmodel.quantizers.values():
            learnt = q.start_training(self.learn_scales)
            q.mode = QUANT
            if learnt is not None:
                self.parameters.append(learnt)
        qmodel._mode = "train"  # guard_unrecorded refuses untraced layers, as in quant mode

    @property
    def active(self) -> bool:
        return bool(self._weights)

    def weight_scales(self) -> dict[str, torch.Tensor]:
        """Each layer's weight scale as trained so far, shaped as :func:`weight_scale` shapes it."""
        return {n: fq.scale.detach().clamp(min=_EPS).reshape(fq.shape).clone() for n, fq in self._weights.items()}

    def float_state_dict(self) -> dict[str, torch.Tensor]:
        """The trained network's ``state_dict`` in the model's own layout, loadable into a fresh copy.

        Each folded BN comes back holding mean 0, variance ``1 - eps`` and weight 1 (so folding
        it again multiplies by 1, to float32 rounding) and the trained folded bias as its bias.
        """
        qmodel = self.qmodel
        state = qmodel.model.state_dict()
        for rec, (conv_name, bn_name) in zip(qmodel._folds, qmodel.plan.folds):
            bias = state.pop(f"{conv_name}.bias")
            if rec.had_bias:
                state[f"{conv_name}.bias"] = torch.zeros_like(bias)
            for key in [k for k in state if k.startswith(bn_name + ".")]:
                del state[key]  # whatever replaced the BN (an Identity, or its own activation)
            bn = rec.bn
            if not bn.affine:
                raise ValueError(f"{bn_name}: a BatchNorm without affine parameters cannot hold the trained bias")
            for key, value in bn.state_dict().items():
                state[f"{bn_name}.{key}"] = value.clone()
            state[f"{bn_name}.weight"] = torch.ones_like(bn.weight)
            state[f"{bn_name}.bias"] = bias.detach().clone().to(bn.bias)
            state[f"{bn_name}.running_mean"] = torch.zeros_like(bn.running_mean)
            state[f"{bn_name}.running_var"] = torch.full_like(bn.running_var, 1.0 - bn.eps)
        return {k: v.detach().clone() for k, v in state.items()}

    def quant_state_dict(self) -> dict:
        """The quantized state as trained so far (:meth:`QuantizedModel.quant_state_dict`'s layout)."""
        qmodel = self.qmodel
        for q in qmodel.quantizers.values():
            if self.learn_scales:
                q.sync_scale()  # the optimizer's last step is not in the buffer before the next forward
        kept = qmodel.learned_scales
        qmodel.learned_scales = self.weight_scales()
        try:
            state = qmodel.quant_state_dict()
        finally:
            qmodel.learned_scales = kept
        for point in state["points"].values():
            point.pop("log_scale", None)  # the ``scale`` buffer beside it holds its value
        return state

    def finish(self) -> QuantizedModel:
        """End training: the weights stay as trained, the scales become the model's qparams
        (``learned_scales`` for weights), and the model is in quant mode."""
        qmodel = self.qmodel
        scales = self.weight_scales()
        for swap in self._swaps:
            swap.remove()
        for q in qmodel.quantizers.values():
            q.stop_training()
        self._weights, self._swaps = {}, []
        qmodel._mode = "float"
        qmodel.learned_scales = scales
        qmodel.set_mode(QUANT)
        return qmodel


__all__ = ["QuantTraining", "check_learnable"]
