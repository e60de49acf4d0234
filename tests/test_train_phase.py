"""The trainer's model-owned phase per epoch (Recommender.train_phase with its own optimiser):
which optimiser steps which parameters, the order of the per-epoch hooks, the logged losses,
the checks of a model's phase declaration and the phase optimiser in the checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from toy_graphs import toy_graph

from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.models import LightGCN
from pyg_dhmrec.train import CheckpointError, Trainer, read_checkpoint, write_checkpoint

CONFIG = {
    "batch_size": 64,
    "epochs": 2,
    "eval_step": 1,
    "seed": 0,
    "progress": False,
    "topk": [5],
    "metrics": ["recall"],
    "early_stop_metric": "recall@5",
    "eval_batch_size": 64,
}


class PhasedLightGCN(LightGCN):
    """LightGCN plus a phase that fits a detached copy of the user embeddings with a linear
    probe (a stand-in for DiffMM's denoisers): the probe is trained by the phase only."""

    phase_loss_parts = ("probe",)

    def __init__(self, data, **kwargs) -> None:
        super().__init__(data, **kwargs)
        dim = self.user_embedding.embedding_dim
        self.probe = torch.nn.Linear(dim, dim)
        self.events: list[str] = []

    def phase_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.probe.parameters())

    def phase_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.probe.parameters(), lr=0.1)

    def train_phase(self, epoch: int, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        self.events.append(f"phase {epoch}")
        target = self.user_embedding.weight.detach()
        noisy = target + 0.1 * torch.randn_like(target)  # draws from torch's global RNG
        loss = (self.probe(noisy) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return {"probe": loss.detach()}

    def on_train_epoch_start(self) -> None:
        self.events.append("epoch start")
        super().on_train_epoch_start()


@pytest.fixture
def graph():
    data = toy_graph(num_users=24, num_items=20, num_interactions=110)
    data[RATES].valid_edge_index = data[RATES].edge_index[:, :8]
    data[RATES].test_edge_index = data[RATES].edge_index[:, 8:16]
    return data


def _trainer(model, data, output: Path | None = None, **config) -> Trainer:
    return Trainer(model, data, {**CONFIG, **config}, torch.device("cpu"), output=output)


def _snapshot(params) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def _changed(before, params) -> list[bool]:
    return [not torch.equal(b, p.detach()) for b, p in zip(before, params, strict=True)]


def test_each_optimiser_steps_only_its_own_parameters(graph) -> None:
    torch.manual_seed(0)
    model = PhasedLightGCN(graph, embedding_dim=8)
    trainer = _trainer(model, graph)
    phase = list(model.probe.parameters())
    main = [p for n, p in model.named_parameters() if not n.startswith("probe.")]
    stepped = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert stepped == {id(p) for p in main}  # the main Adam never holds a phase parameter
    assert trainer.phase_optimizer is not None

    # The phase alone: the probe moves, no main parameter does.
    main_before, phase_before = _snapshot(main), _snapshot(phase)
    losses = trainer.train_phase(1)
    assert set(losses) == {"probe"} and losses["probe"] > 0
    assert all(_changed(phase_before, phase)) and not any(_changed(main_before, main))

    # A whole epoch: the BPR steps move the main parameters and leave the probe where the
    # epoch's phase put it (the main step neither reads it nor steps it).
    steps = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: steps.append(_snapshot(phase)) or original(*a, **k)
    main_before = _snapshot(main)
    record = trainer.train_epoch(2)
    assert steps and all(
        torch.equal(a, b) for snap in steps for a, b in zip(snap, steps[0], strict=True)
    )
    assert all(torch.equal(a, p) for a, p in zip(steps[0], phase, strict=True))
    assert all(_changed(main_before, main))
    # The epoch's record: the main loss parts, then the phase's, prefixed.
    assert list(record) == ["bpr", "reg", "phase_probe"]


def test_phase_runs_before_the_epoch_start_hook_every_epoch(graph, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = PhasedLightGCN(graph, embedding_dim=8)
    results = _trainer(model, graph, output=tmp_path).fit()
    assert model.events == ["phase 1", "epoch start", "phase 2", "epoch start"]
    history = results["history"]
    assert [set(h["loss"]) for h in history] == [{"bpr", "reg", "phase_probe"}] * 2
    assert history[1]["loss"]["phase_probe"] < history[0]["loss"]["phase_probe"]
    # The checkpoint holds the phase optimiser's state (SGD: its param groups).
    saved = read_checkpoint(tmp_path / "checkpoint.pt")["phase_optimizer"]
    assert saved["param_groups"][0]["lr"] == 0.1


def test_phase_optimizer_state_is_restored(graph, tmp_path: Path) -> None:
    class AdamPhase(PhasedLightGCN):
        def phase_optimizer(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.probe.parameters(), lr=0.01)

    torch.manual_seed(0)
    first = _trainer(AdamPhase(graph, embedding_dim=8), graph, output=tmp_path, epochs=1)
    first.fit()
    saved = first.phase_optimizer.state_dict()
    torch.manual_seed(1)
    again = _trainer(AdamPhase(graph, embedding_dim=8), graph, epochs=1)
    again.load_checkpoint(tmp_path / "checkpoint.pt")
    restored = again.phase_optimizer.state_dict()
    assert restored["state"].keys() == saved["state"].keys()
    for k, state in saved["state"].items():
        assert torch.equal(restored["state"][k]["exp_avg"], state["exp_avg"])
    assert torch.equal(again.model.probe.weight, first.model.probe.weight)


def test_checkpoint_without_phase_state_refused(graph, tmp_path: Path) -> None:
    torch.manual_seed(0)
    _trainer(PhasedLightGCN(graph, embedding_dim=8), graph, output=tmp_path, epochs=1).fit()
    path = tmp_path / "checkpoint.pt"
    payload = read_checkpoint(path)
    del payload["phase_optimizer"]  # as a checkpoint written before the model had a phase
    write_checkpoint(path, payload)
    trainer = _trainer(PhasedLightGCN(graph, embedding_dim=8), graph, epochs=1)
    with pytest.raises(CheckpointError, match=r"\(no phase optimizer state, the model has a"):
        trainer.load_checkpoint(path)


def test_nan_phase_loss_stops_the_epoch(graph) -> None:
    class NanPhase(PhasedLightGCN):
        def train_phase(self, epoch, optimizer):
            return {"probe": float("nan")}

    trainer = _trainer(NanPhase(graph, embedding_dim=8), graph)
    with pytest.raises(FloatingPointError, match="epoch 1: phase loss part"):
        trainer.train_epoch(1)


def test_bad_phase_declarations_refused(graph) -> None:
    class NoOptimizer(PhasedLightGCN):
        def phase_optimizer(self):
            return None

    class WrongParameters(PhasedLightGCN):
        def phase_optimizer(self):
            return torch.optim.SGD(self.user_embedding.parameters(), lr=0.1)

    class OptimizerWithoutPhase(LightGCN):
        def phase_optimizer(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    with pytest.raises(ValueError, match=r"phase_parameters\(\) names 2 parameter\(s\), but"):
        _trainer(NoOptimizer(graph, embedding_dim=8), graph)
    with pytest.raises(ValueError, match=r"must step exactly WrongParameters.phase_parameters"):
        _trainer(WrongParameters(graph, embedding_dim=8), graph)
    with pytest.raises(ValueError, match=r"gave an optimiser, but"):
        _trainer(OptimizerWithoutPhase(graph, embedding_dim=8), graph)


def test_models_without_a_phase_log_no_phase_losses(graph) -> None:
    torch.manual_seed(0)
    trainer = _trainer(LightGCN(graph, embedding_dim=8), graph)
    assert trainer.phase_optimizer is None and trainer.train_phase(1) == {}
    assert set(trainer.train_epoch(1)) == {"bpr", "reg"}
