"""The trainer's optimisation step: its values, its NaN checks and (on CUDA) no host syncs."""

from __future__ import annotations

import pytest
import torch
from toy_graphs import toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.models import VBPR, LightGCN
from pyg_dhmrec.train import Trainer, seed_everything

CONFIG = {"batch_size": 64, "epochs": 1, "seed": 0, "progress": False, "weight_decay": 0.01}


def _data():  # noqa: ANN202
    data = toy_graph(modalities={"image": 6})
    data[RATES].valid_edge_index = data[RATES].edge_index[:, :5]
    data[RATES].test_edge_index = data[RATES].edge_index[:, 5:10]
    return data


def _trainer(model_class=VBPR, device: str = "cpu") -> Trainer:  # noqa: ANN001
    data = _data()
    torch.manual_seed(0)
    return Trainer(model_class(data, embedding_dim=8), data, CONFIG, torch.device(device))


def test_train_step_is_the_per_parameter_adam_step() -> None:
    """The trainer's fused Adam (pyg_dhmrec.optim.adam) against torch's per-parameter loop:
    the same losses step by step and the same parameters to float rounding."""
    trainer, reference = _trainer(), _trainer()
    assert trainer.optimizer.defaults["fused"] is True
    # the former optimiser: torch's per-parameter loop (its CPU default)
    optimizer = torch.optim.Adam(
        reference.model.parameters(), lr=trainer.config["learning_rate"], weight_decay=0.01
    )
    for batch in list(trainer.sampler)[:4]:
        parts = trainer.train_step(batch)
        expected = reference.model.loss(batch)
        optimizer.zero_grad()
        sum(expected.values()).backward()
        optimizer.step()
        assert all(not v.requires_grad for v in parts.values())
        for k, v in parts.items():
            assert float(v) == pytest.approx(float(expected[k]), rel=1e-5, abs=1e-7)
    for a, b in zip(trainer.model.parameters(), reference.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adam_is_fused_where_the_kernel_exists() -> None:
    from pyg_dhmrec.optim import adam

    cpu = adam([torch.nn.Parameter(torch.zeros(3))], lr=0.1, weight_decay=0.5)
    assert cpu.defaults["fused"] is True and not cpu.defaults["foreach"]
    assert cpu.defaults["lr"] == 0.1 and cpu.defaults["weight_decay"] == 0.5
    meta = adam([torch.nn.Parameter(torch.zeros(3, device="meta"))], lr=0.1)
    assert meta.defaults["foreach"] is True and not meta.defaults["fused"]
    # one Adam step from zero with gradient g moves each entry by -lr * sign(g)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.tensor([2.0, -0.5, 1e-3])
    opt = adam([p], lr=0.1)
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([-0.1, 0.1, -0.1]), rtol=1e-4, atol=1e-6)


def test_nan_loss_stops_the_cpu_step_before_the_update() -> None:
    trainer = _trainer(LightGCN)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    loss = trainer.model.loss
    trainer.model.loss = lambda batch, out=None: {
        **loss(batch, out),
        "reg": torch.tensor(float("inf")),
    }
    with pytest.raises(FloatingPointError, match=r"^loss part\(s\) reg became NaN or inf$"):
        trainer.train_step(next(iter(trainer.sampler)))
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    with pytest.raises(FloatingPointError, match=r"^epoch 4: loss part\(s\) reg became NaN"):
        trainer.train_epoch(4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("model_class", [LightGCN, VBPR])
def test_cuda_training_epoch_never_waits_for_the_device(model_class) -> None:  # noqa: ANN001
    trainer = _trainer(model_class, "cuda")
    trainer.train_epoch(1)  # warm-up: lazy CUDA initialisation may synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        batches = [b.pin_memory() for b in trainer.sampler]
        for batch in batches:
            trainer.train_step(batch.to(trainer.device, non_blocking=True))
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_seeding_selects_deterministic_kernels_without_nan_filled_allocations() -> None:
    seed_everything(0, torch.device("cpu"))
    assert torch.are_deterministic_algorithms_enabled()
    # NaN-filling every fresh tensor is a debugging aid: it changes no value, only the speed
    assert not torch.utils.deterministic.fill_uninitialized_memory
