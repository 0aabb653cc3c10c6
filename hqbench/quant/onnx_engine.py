"""Run a calibrated QuantizedModel as real INT8 from hqbench's QDQ export, called like the torch model.

:class:`ExportedEngine` exports the model once (:func:`hqbench.quant.export.export_onnx`, QDQ,
dynamic batch) and turns outputs back into the model's structure; each runtime subclasses it:
:class:`OnnxRuntimeEngine` here (all graph optimizations on, so onnxruntime fuses
``DQ -> Conv -> Q`` into QLinearConv and friends), :class:`~hqbench.quant.openvino_engine.OpenVinoEngine`
beside it. Grids narrower than 8 bits carry a Clip between Q and DQ that keeps them exact but stops
that fusion: those layers then run as float kernels on dequantized integers, and the engine's
:meth:`~ExportedEngine.record` says which.

:class:`~hqbench.callbacks.QuantizationCallback` (``engine="onnxruntime"``) puts it in place of
a LightningModule's ``forward``; by hand::

    engine = OnnxRuntimeEngine(qmodel, (example,))
    logits = engine(images)
    engine.record()  # version, settings, which conv/matmul layers ran in int8
"""

from __future__ import annotations

import collections
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from . import cpu
from .export import export_onnx

# onnxruntime's kernels after its optimiser: integer ones, and the float ones a layer falls back to
ORT_INT8_OPS = ("QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger", "MatMulIntegerToFloat",
                "DynamicQuantizeMatMul", "QLinearConvTranspose")
ORT_FLOAT_OPS = ("Conv", "FusedConv", "NhwcFusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul")


def make_session(path: str | os.PathLike, threads: int | None = None, optimize: bool = True,
                 optimized_path: str | os.PathLike | None = None):
    """An onnxruntime CPU session; ``optimize`` turns on every graph optimization (QDQ fusion).

    ``optimized_path`` saves the graph onnxruntime runs, to see which int8 kernels it fused.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if threads is not None:
        options.intra_op_num_threads = threads
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        # onnxruntime warns that the saved graph is this CPU's; it is read here, on this CPU, and removed
        options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def weight_container_for(features: dict | None = None) -> str:
    """``"uint8"`` where the CPU's u8s8 kernels sum in saturating int16 (x86 without VNNI): U8U8
    kernels widen first and stay exact. ``"int8"`` elsewhere, the faster U8S8 path."""
    return "uint8" if (features or cpu.cpu_features())["saturating_u8s8"] else "int8"


def int8_share(int8: int, quantized: int, fallbacks: list[str]) -> dict:
    """The row's account of where the quantized layers ran: ``"52/52"`` and the float fallbacks by name."""
    return {"int8_layers": f"{min(int8, quantized)}/{quantized}", "float_layers": fallbacks,
            "all_int8": int8 >= quantized and not fallbacks}


class ExportedEngine:
    """Exports ``qmodel`` once; subclasses load the file into a runtime and run it.

    Args:
        qmodel: a calibrated :class:`~hqbench.quant.model.QuantizedModel`.
        example_inputs: positional inputs for one forward (any batch size: axis 0 is dynamic).
        workdir: where the ``.onnx``, ``.qstate.pt`` and ``.encodings.json`` go; a temporary
            folder, removed with the engine, when None.
        overwrite: replace existing files in ``workdir``.
        container: activations' container (:func:`~hqbench.quant.export.export_onnx`).
        weights: weights' container, ``"int8"``, ``"uint8"`` or ``"auto"`` (the runtime's choice
            for this CPU, :meth:`auto_weights`).
    """

    RUNTIME = ""  # the pip distribution whose version the row records

    def __init__(self, qmodel, example_inputs, workdir: str | os.PathLike | None = None, *, opset: int = 17,
                 overwrite: bool = False, container: str = "uint8", weights: str = "auto"):
        example_inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
        self._tmp = tempfile.TemporaryDirectory(prefix=f"hqbench-{self.RUNTIME}-") if workdir is None else None
        folder = Path(self._tmp.name if self._tmp else workdir)
        self.path = folder / "model.onnx"
        self.weights = self.auto_weights() if weights == "auto" else weights
        self.export_info = export_onnx(qmodel, self.path, example_inputs, opset=opset, container=container,
                                       weights=self.weights, overwrite=overwrite or self._tmp is not None)
        with torch.no_grad():
            leaves, self._spec = tree_flatten(qmodel.model(*example_inputs))
        if not all(isinstance(v, torch.Tensor) for v in leaves):
            raise TypeError(f"{type(self).__name__} needs a model whose outputs are all tensors "
                            f"(got {[type(v).__name__ for v in leaves]})")
        self.quantized_layers = self.export_info["quantized_layers"]

    def auto_weights(self) -> str:
        return "int8"

    def _outputs(self, arrays, device) -> object:
        return tree_unflatten([torch.from_numpy(np.asarray(a)).to(device) for a in arrays], self._spec)

    def settings(self) -> dict:
        """The runtime's precision settings, as the row records them."""
        return {"activations": self.export_info["container"], "weights": self.weights}

    def placement(self) -> dict:
        """:func:`int8_share` of this runtime's compiled graph."""
        raise NotImplementedError

    def record(self) -> dict:
        """What the row records: ``engine_version``, ``engine_settings``, ``int8_layers``, ``float_layers``,
        ``all_int8`` and ``cpu``."""
        from importlib.metadata import version

        return {"engine_version": f"{self.RUNTIME} {version(self.RUNTIME)}", "engine_settings": self.settings(),
                **self.placement(), "cpu": cpu.describe()}

    def close(self) -> None:
        """Drop the runtime and the temporary folder (if the engine made one)."""
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class OnnxRuntimeEngine(ExportedEngine):
    """hqbench's QDQ export on onnxruntime's CPU kernels; ``engine(*inputs)`` returns torch tensors.

    ``weights="auto"`` picks uint8 weights (exact U8U8 kernels) on CPUs whose U8S8 kernels
    saturate, int8 elsewhere (:func:`weight_container_for`). ``threads``: intra-op threads.
    """

    RUNTIME = "onnxruntime"

    def __init__(self, qmodel, example_inputs, workdir: str | os.PathLike | None = None, *, opset: int = 17,
                 threads: int | None = None, overwrite: bool = False, container: str = "uint8", weights: str = "auto"):
        super().__init__(qmodel, example_inputs, workdir, opset=opset, overwrite=overwrite, container=container,
                         weights=weights)
        with tempfile.TemporaryDirectory(prefix="hqbench-ort-graph-") as graph:
            optimized = Path(graph) / "optimized.onnx"  # the graph onnxruntime runs: which kernels it fused
            self.session = make_session(self.path, threads, optimized_path=optimized)
            self._placement = self._count(optimized)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def auto_weights(self) -> str:
        return weight_container_for()

    def _count(self, optimized: Path) -> dict:
        import onnx

        nodes = onnx.load(str(optimized), load_external_data=False).graph.node
        ops = collections.Counter(n.op_type for n in nodes)
        fallbacks = [n.name or n.output[0] for n in nodes if n.op_type in ORT_FLOAT_OPS]
        return int8_share(sum(ops[o] for o in ORT_INT8_OPS), self.quantized_layers, fallbacks)

    def placement(self) -> dict:
        return dict(self._placement)

    def settings(self) -> dict:
        return {**super().settings(), "graph_optimization_level": "ORT_ENABLE_ALL", "provider": "CPUExecutionProvider"}

    @torch.no_grad()
    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.input_names):
            raise TypeError(f"the exported model takes {len(self.input_names)} inputs, got {len(inputs)}")
        feeds = {n: x.detach().to("cpu", torch.float32).contiguous().numpy() for n, x in zip(self.input_names, inputs)}
        device = inputs[0].device if inputs else torch.device("cpu")
        return self._outputs(self.session.run(None, feeds), device)

    def close(self) -> None:
        self.session = None
        super().close()
