"""``hqbench analyze``: every method and width of a task config calibrated on its calibration images,
each one's layer report (:mod:`hqbench.reporting.layers`) on the held-out evaluation images and,
with ``sensitivity=``, its points ranked on the calibration images
(:mod:`hqbench.reporting.sensitivity`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf
from rich.console import Console

from hqbench.methods import FP32, PYTORCH, is_peer
from hqbench.paths import refuse_existing
from hqbench.quant.layer_report import LayerReport
from hqbench.reporting.layers import FILES, report_label, worst_table, write_layers
from hqbench.reporting.sensitivity import FILES as SENSITIVITY_FILES

def _device(cfg):
    import torch

    accelerator = str(cfg.get("trainer", {}).get("accelerator", "auto"))
    return torch.device("cuda" if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available() else "cpu")


def _cells(cfg, console: Console) -> list:
    """The config's cells of hqbench's own calibrators; fp32 (the reference), pytorch and peers are skipped."""
    from hqbench.runner import plan_cells, plan_engines

    engines = plan_engines(cfg)
    if engines != ["fake"]:
        raise ValueError(f"engine={','.join(engines)}: hqbench analyze measures the fake-quant model; drop engine=")
    precision = str(cfg.get("trainer", {}).get("precision", "32-true"))
    if precision != "32-true":
        raise ValueError(f"trainer.precision={precision}: hqbench analyze runs in float32 only")
    cells = plan_cells(cfg)
    skipped = list(dict.fromkeys(c.method for c in cells if c.method in (FP32, PYTORCH) or is_peer(c.method)))
    cells = [c for c in cells if c.method not in skipped]
    if not cells:
        raise ValueError("hqbench analyze: no hqbench calibrator among method=; give e.g. method=A,B,C,D")
    if skipped:
        console.print(f"analyze: skipping {', '.join(skipped)} (the float model is the reference; "
                      "pytorch and peers have no hqbench quantization points)", markup=False, soft_wrap=True)
    return cells


def _directions(cfg) -> list[str]:
    """``sensitivity=``: the directions to rank the points in (none by default), checked up front."""
    from hqbench.quant.sensitivity import DIRECTIONS

    value = cfg.get("sensitivity") or []
    items = [str(v) for v in (value if OmegaConf.is_list(value) or isinstance(value, (list, tuple)) else [value])]
    bad = [d for d in items if d not in DIRECTIONS]
    if bad:
        raise ValueError(f"sensitivity: unknown direction {bad[0]!r}; valid: {', '.join(DIRECTIONS)} (a comma list)")
    return list(dict.fromkeys(items))


def _calibrated(task, calib: list, cell, float_scopes, input_fn, statistics: dict):
    """``task`` quantized as a table cell is (a copy): calibrated once per method, frozen at each width
    from the same statistics, then the recipe's weight-side steps."""
    from hqbench.quant import fit_weights, prepare, quantize

    if cell.method in statistics:
        qmodel = prepare(task, input_fn(calib[0]), cell.method, cell.recipe, float_scopes=float_scopes)
        qmodel.calibrate_from(statistics[cell.method])
        return fit_weights(qmodel, calib, input_fn=input_fn)
    qmodel = quantize(task, calib, method=cell.method, recipe=cell.recipe, float_scopes=float_scopes,
                      input_fn=input_fn)
    statistics[cell.method] = qmodel.calibration_statistics()
    return qmodel


def analyze(cfg, console: Console | None = None, command: str = "") -> dict[str, LayerReport]:
    """``hqbench analyze``: each method and width of ``cfg`` calibrated on the task's calibration
    images, its layer report on the evaluation images; prints the worst points of each and writes
    :data:`FILES` to ``cfg.out`` (a folder; none when null). Returns the reports by label."""
    import lightning as L
    from hydra.utils import instantiate

    from hqbench.data.resolve import build_data
    from hqbench.models import create_model
    import torch
    from torch.utils._pytree import tree_map

    from hqbench.quant import default_input_fn
    from hqbench.quant.sensitivity import sensitivity
    from hqbench.reporting.sensitivity import sensitivity_table, write_sensitivity
    from hqbench.runner import portable_path, provenance

    console = console or Console()
    cells = _cells(cfg, console)
    directions = _directions(cfg)
    folder = Path(str(cfg.out)).expanduser() if cfg.get("out") else None
    if folder is not None and folder.exists() and not folder.is_dir():
        raise FileExistsError(f"out={cfg.out} is a file; hqbench analyze writes {', '.join(FILES)} into a folder")
    if folder is not None:  # before any calibration: a report never replaces an earlier one
        refuse_existing(*(folder / name for name in (*FILES, *(SENSITIVITY_FILES if directions else ()))),
                        hint="name a new out=DIR")
    L.seed_everything(cfg.seed, verbose=False)
    model, card = create_model(cfg.model.name, weights=cfg.model.weights)
    dm, source = build_data(cfg, card)
    device = _device(cfg)
    task = instantiate(cfg.module, _partial_=True)(model, card).to(device).eval()

    def input_fn(batch) -> tuple:
        return tuple(t.to(device) for t in default_input_fn(batch))

    def on_device(batch):
        return tree_map(lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, batch)

    def score(batch, output):  # the task's per-sample metric, for the sensitivity's paired intervals
        return task.sample_scores(on_device(batch), output)

    calib = list(dm.calibration_dataloader())
    console.print(f"[bold]{card.name}[/]: layer report of {', '.join(dict.fromkeys(c.method for c in cells))} on "
                  f"{len(dm.eval_files)} eval images, calibrated on {len(dm.calibration_files)} (seed {cfg.seed})",
                  soft_wrap=True)
    with_widths = len({(c.recipe.weight_bits, c.recipe.act_bits) for c in cells}) > 1
    reports, rankings, statistics = {}, {}, {}
    for cell in cells:
        qmodel = _calibrated(task, calib, cell, task.float_scopes, input_fn, statistics)
        report = qmodel.layer_report(dm.test_dataloader(), input_fn)
        label = report_label(report, with_widths)
        reports[label] = report
        console.print(worst_table(report))
        # on the calibration images (issue 30: cheap enough there by default), as mixed precision ranks them
        rankings[label] = [sensitivity(qmodel, calib, input_fn, d, score_fn=score) for d in directions]
        for ranking in rankings[label]:
            console.print(sensitivity_table(ranking, metric=task.METRIC))
        del qmodel  # a copy of the model per cell: one at a time
    if folder is not None:
        meta = {"task": cfg.task, "model": card.name, "dataset": portable_path(source), "n_eval": len(dm.eval_files),
                "n_calib": len(dm.calibration_files), "seed": cfg.seed, "engine": "fake",
                "options": cells[0].options, **provenance(command)}
        written = write_layers(reports, folder, meta, title=f"{card.name}: propagated SQNR per activation point")
        if directions:
            written += write_sensitivity(rankings, folder, {**meta, "samples": "calibration images"})
        console.print(f"written {', '.join(str(p) for p in written)}", markup=False, soft_wrap=True)
    return reports
