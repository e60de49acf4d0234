"""Trainer options for benchmarks and accelerators: max_steps_per_epoch, compile and
matmul_precision (configs/overall.yaml), their validation and their effect on training."""

from __future__ import annotations

import importlib

import pytest
import torch
from toy_graphs import toy_graph

from pyg_dhmrec.config import ConfigError, load_config, validate_config
from pyg_dhmrec.data.dataset import RATES
from pyg_dhmrec.models.lightgcn import LightGCN
from pyg_dhmrec.train import CompiledStep, Trainer, cpp_compiler

# The module, not the package's train() function of the same name.
train_module = importlib.import_module("pyg_dhmrec.train")
CPU = torch.device("cpu")
# 4 batches of 128 per epoch on the toy graph (400 train interactions).
BASE = {
    "batch_size": 128,
    "seed": 0,
    "progress": False,
    "topk": [5],
    "early_stop_metric": "recall@5",
}


@pytest.fixture
def graph():
    data = toy_graph()
    data[RATES].valid_edge_index = data[RATES].edge_index[:, :5]
    data[RATES].test_edge_index = data[RATES].edge_index[:, 5:10]
    return data


@pytest.fixture(autouse=True)
def _restore_precision():
    before = torch.get_float32_matmul_precision()
    yield
    torch.set_float32_matmul_precision(before)
    torch._dynamo.reset()


def _trainer(data, **config) -> Trainer:
    torch.manual_seed(0)
    return Trainer(LightGCN(data), data, {**BASE, **config}, CPU)


def test_defaults_are_off() -> None:
    config = load_config("lightgcn", "synthetic")
    assert config["max_steps_per_epoch"] is None
    assert config["compile"] is False
    assert config["matmul_precision"] == "highest"
    on = load_config(
        "lightgcn",
        "synthetic",
        {"max_steps_per_epoch": 5, "compile": True, "matmul_precision": "medium"},
    )
    assert (on["max_steps_per_epoch"], on["compile"], on["matmul_precision"]) == (5, True, "medium")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_steps_per_epoch": 0}, "key 'max_steps_per_epoch' must be an integer >= 1, got 0"),
        ({"max_steps_per_epoch": 2.5}, "key 'max_steps_per_epoch' must be an integer, got 2.5"),
        (
            {"compile": "yes"},
            "command line: key 'compile' expects bool (like its default False), got str 'yes'",
        ),
        (
            {"matmul_precision": "tf32"},
            "key 'matmul_precision' must be one of highest, high, medium, got 'tf32'",
        ),
        ({"negative_items": "cold"}, "key 'negative_items' must be one of all, train, got 'cold'"),
    ],
)
def test_bad_values_are_refused_naming_the_key(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_config("lightgcn", "synthetic", overrides)
    assert message in str(error.value)


def test_validate_config_checks_a_config_built_by_hand() -> None:
    with pytest.raises(ConfigError, match="key 'compile' must be true or false, got 1"):
        validate_config({"compile": 1})
    with pytest.raises(ConfigError, match="key 'matmul_precision' must be one of"):
        validate_config({"matmul_precision": None})
    validate_config({"compile": False, "matmul_precision": "high", "max_steps_per_epoch": None})


def test_negative_items_reaches_the_trainers_sampler(graph) -> None:
    assert load_config("lightgcn", "synthetic")["negative_items"] == "all"
    assert _trainer(graph).sampler.negative_pool is None
    store = graph[RATES]
    keep = store.edge_index[1] >= 3  # items 0, 1, 2 lose their train interactions
    store.edge_index = store.edge_index[:, keep]
    sampler = _trainer(graph, negative_items="train").sampler
    trained = torch.unique(store.edge_index[1])
    assert not bool(torch.isin(torch.arange(3), trained).any())
    assert torch.equal(sampler.negative_pool, trained)
    assert bool(torch.isin(next(iter(sampler)).neg_item, trained).all())


def test_max_steps_per_epoch_ends_the_epoch_and_averages_over_the_steps_run(graph) -> None:
    trainer = _trainer(graph, max_steps_per_epoch=2)
    assert len(trainer.sampler) == 4
    seen = []
    step = trainer.step
    trainer.step = lambda batch: seen.append(step(batch)) or seen[-1]
    losses = trainer.train_epoch(1)
    assert len(seen) == 2
    for part in ("bpr", "reg"):
        assert losses[part] == pytest.approx(sum(float(s[part]) for s in seen) / 2)
    # Without the key, an epoch is every batch.
    seen.clear()
    trainer.config["max_steps_per_epoch"] = None
    trainer.train_epoch(2)
    assert len(seen) == 4


def test_matmul_precision_is_set_by_every_trainer(graph) -> None:
    _trainer(graph, matmul_precision="high")
    assert torch.get_float32_matmul_precision() == "high"
    _trainer(graph)  # the default puts full float32 back
    assert torch.get_float32_matmul_precision() == "highest"
    with pytest.raises(ValueError, match="matmul_precision must be one of highest, high, medium"):
        train_module.set_matmul_precision("low")


def test_compiled_step_trains_like_the_eager_step(graph, monkeypatch) -> None:
    # torch.compile traces the whole step (Dynamo + AOTAutograd, forward and backward graphs);
    # aot_eager skips Inductor's C++ code generation, which takes a minute on a cold cache.
    monkeypatch.setattr(train_module, "COMPILE_BACKEND", "aot_eager")
    # batches of 100: one batch shape, so one trace (a last, smaller batch would add one)
    eager = _trainer(graph, batch_size=100)
    compiled = _trainer(graph, batch_size=100, compile=True)
    assert isinstance(compiled.step, CompiledStep)
    for epoch in (1, 2):  # the second epoch reuses the graphs (a new pruned graph, same shapes)
        expected, got = eager.train_epoch(epoch), compiled.train_epoch(epoch)
        assert got.keys() == expected.keys()
        for part in expected:
            assert got[part] == pytest.approx(expected[part], rel=1e-5, abs=1e-7)
    for a, b in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_on_cpu_without_a_cpp_compiler_is_refused(graph, monkeypatch) -> None:
    monkeypatch.setattr(train_module, "cpp_compiler", lambda: None)
    with pytest.raises(RuntimeError, match="compile: true on CPU needs a C\\+\\+ compiler"):
        _trainer(graph, compile=True)
    monkeypatch.undo()
    monkeypatch.setenv("CXX", "no-such-compiler-i17c")
    assert cpp_compiler() is None  # $CXX, when set, is the one compiler looked for


def test_a_compiler_failure_names_the_fix(graph, monkeypatch) -> None:
    def broken(graph_module, example_inputs):
        raise RuntimeError("no kernels today")

    monkeypatch.setattr(train_module, "COMPILE_BACKEND", broken)
    trainer = _trainer(graph, compile=True, max_steps_per_epoch=1)
    with pytest.raises(RuntimeError, match="torch.compile of the training step failed") as error:
        trainer.train_epoch(1)
    assert "set compile: false" in str(error.value)
