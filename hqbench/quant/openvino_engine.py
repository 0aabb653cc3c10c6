"""Run hqbench's own QDQ export on OpenVINO's CPU plugin (``engine=openvino``).

The file :func:`hqbench.quant.export.export_onnx` writes is read by ``openvino.Core().read_model``
and compiled for ``"CPU"``, whose low-precision transformations turn each ``DQ -> Conv -> Q`` into
an int8 (u8 or i8) convolution. Float layers are compiled with ``INFERENCE_PRECISION_HINT=f32``:
on CPUs with AMX or AVX512-BF16 OpenVINO would otherwise run them in bf16, which moves every
number away from fake-quant (and, measured here on a Xeon with AMX, its bf16 path refused to
compile the native-container file). Which layers ran in int8 is read back from the compiled
model's runtime graph (``runtimePrecision`` of each Convolution/FullyConnected/MatMul).
"""

from __future__ import annotations

import os

import torch

from .onnx_engine import ExportedEngine, int8_share

OV_LAYER_TYPES = ("Convolution", "GroupConvolution", "Deconvolution", "FullyConnected", "MatMul", "Gemm")
INT8_PRECISIONS = ("i8", "u8")


class OpenVinoEngine(ExportedEngine):
    """hqbench's QDQ export compiled by OpenVINO for its CPU device; ``engine(*inputs)`` returns torch tensors.

    Args (beyond :class:`~hqbench.quant.onnx_engine.ExportedEngine`'s):
        threads: ``INFERENCE_NUM_THREADS`` (OpenVINO's default when None).
    """

    RUNTIME = "openvino"
    CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}

    def __init__(self, qmodel, example_inputs, workdir: str | os.PathLike | None = None, *, opset: int = 17,
                 threads: int | None = None, overwrite: bool = False, container: str = "uint8", weights: str = "int8"):
        import openvino as ov

        super().__init__(qmodel, example_inputs, workdir, opset=opset, overwrite=overwrite, container=container,
                         weights=weights)
        core = ov.Core()
        self.config = {**self.CONFIG, **({"INFERENCE_NUM_THREADS": threads} if threads else {})}
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", self.config)
        self._outputs_ports = list(self.compiled.outputs)
        self._n_inputs = len(self.compiled.inputs)
        self._request = self.compiled.create_infer_request()

    def placement(self) -> dict:
        int8, fallbacks = 0, []
        for op in self.compiled.get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            if "layerType" not in info or info["layerType"].astype(str) not in OV_LAYER_TYPES:
                continue
            if info["runtimePrecision"].astype(str).lower() in INT8_PRECISIONS:
                int8 += 1
            else:
                fallbacks.append(info["originalLayersNames"].astype(str) if "originalLayersNames" in info
                                 else op.get_friendly_name())
        return int8_share(int8, self.quantized_layers, fallbacks)

    def settings(self) -> dict:
        return {**super().settings(), "device": "CPU", **self.config}

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != self._n_inputs:
            raise TypeError(f"the exported model takes {self._n_inputs} inputs, got {len(inputs)}")
        feeds = [x.detach().to("cpu", torch.float32).contiguous().numpy() for x in inputs]
        results = self._request.infer(feeds)
        device = inputs[0].device if inputs else torch.device("cpu")
        return self._outputs([results[p] for p in self._outputs_ports], device)

    def close(self) -> None:
        self._request = self.compiled = None
        super().close()
