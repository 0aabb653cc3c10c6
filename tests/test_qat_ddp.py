"""QATCallback under DDP (two gloo ranks on CPU): the same trained scales and weights as one process
with the same global batch. The ranks are launched as torchrun launches them (see tests/test_ddp.py)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DataLoader, TensorDataset

from hqbench.callbacks import QATCallback
from hqbench.quant import Recipe
from tests.quant.conftest import ResidualNet, make_dataset
from tests.test_qat import Classifier

pytestmark = pytest.mark.filterwarnings("ignore:.*isinstance.treespec, LeafSpec.*")

WORLD, BATCH = 2, 16  # the global batch; each rank takes BATCH // WORLD of it


def _fit(batch_size: int, rank: int | None = None, **trainer) -> dict:
    """QAT of B at w4a4 for one epoch; ``rank``: this rank's share, samples ``rank, rank + WORLD, ...``
    (the sampler a DistributedSampler without shuffling would give, made explicit)."""
    torch.manual_seed(0)
    module = Classifier(ResidualNet(), lr=0.05, sgd=True)  # SGD: Adam's first steps are lr * sign(g), which float noise flips
    calib = DataLoader(TensorDataset(*make_dataset(64, seed=3)), batch_size=32)
    callback = QATCallback("B", Recipe(act_bits=4, weight_bits=4), calib_dataloader=calib)
    x, y = make_dataset(128, seed=1)
    share = slice(None) if rank is None else slice(rank, None, WORLD)
    L.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, callbacks=[callback], use_distributed_sampler=False, **trainer).fit(
        module, DataLoader(TensorDataset(x[share], y[share]), batch_size=batch_size))
    state = callback.state_dict()
    return {"scales": {n: p["scale"] for n, p in state["points"].items()}, "weights": state["learned_scales"],
            "model": {k: v.clone() for k, v in module.state_dict().items()}, "steps": callback.steps}


def _worker(rank: int, port: int, out: str, extra: dict | None = None) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    dist.init_process_group("gloo", init_method="env://", rank=rank, world_size=WORLD)
    try:
        result = _fit(BATCH // WORLD, rank, strategy=DDPStrategy(find_unused_parameters=True), devices=WORLD,
                      **(extra or {}))
        try:  # plain ddp: the folded BatchNorms' parameters would go without gradients
            _fit(BATCH // WORLD, rank, strategy="ddp", devices=WORLD)
        except ValueError as err:
            result["refusal"] = str(err)
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_train_the_scales_and_weights_one_process_trains(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    one = _fit(BATCH)
    assert ranks[0]["steps"] == one["steps"] == 8
    for r in ranks:
        assert "ddp_find_unused_parameters_true" in r["refusal"]
        # The scales to float precision; a weight may differ by a little more where a sum's rounding
        # moved a fake-quantized value across a rounding tie in some step (weights are 0.1-0.35 here).
        for part, atol in (("scales", 1e-5), ("weights", 1e-5), ("model", 5e-4)):
            assert r[part].keys() == one[part].keys()
            for name, value in one[part].items():
                torch.testing.assert_close(r[part][name], value, rtol=1e-4, atol=atol, msg=lambda m: f"{part} {name}: {m}")
    untrained = _fit(BATCH, max_steps=0)["scales"]  # calibrated, then no step
    assert any(not torch.equal(ranks[0]["scales"][n], v) for n, v in untrained.items())  # they did train
