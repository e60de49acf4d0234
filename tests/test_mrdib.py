"""Tests of the MRdIB plug-in objective, its information-theoretic blocks and its wiring."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.data import HeteroData

from pyg_dhmrec.cli import main
from pyg_dhmrec.config import CONFIG_DIR, ConfigError, load_config, load_yaml
from pyg_dhmrec.data.dataset import RATES, REV_RATES
from pyg_dhmrec.data.sampler import BPRBatch, BPRSampler
from pyg_dhmrec.experiment import load_run, recommend
from pyg_dhmrec.metrics import FullRankEvaluator
from pyg_dhmrec.models import build_model
from pyg_dhmrec.models.base import Embeddings, Recommender
from pyg_dhmrec.nn import CLUB, VariationalEncoder, bpr_loss, kl_to_standard_normal
from pyg_dhmrec.plugins import MRdIB, attach_plugin, modality_models, plugin_keys

NUM_USERS, NUM_ITEMS, DIM = 30, 20, 8
BASES = ["freedom", "dhmrec", "vbpr", "lgmrec"]
MRDIB_PARTS = {"mrdib_kl", "mrdib_unique", "mrdib_redundant", "mrdib_club_fit", "mrdib_synergy"}
# The loss parts each switch removes (the CLUB networks' fit belongs to the redundancy term).
REMOVED = {
    "kl": {"mrdib_kl"},
    "unique": {"mrdib_unique"},
    "redundant": {"mrdib_redundant", "mrdib_club_fit"},
    "synergy": {"mrdib_synergy"},
}


def _data(modalities: dict[str, int] | None = None) -> HeteroData:
    """30 users, 20 items, ~200 interactions; every user and item has one at least."""
    g = torch.Generator().manual_seed(0)
    pairs = {(u, u % NUM_ITEMS) for u in range(NUM_USERS)}
    pairs |= {(i, i) for i in range(NUM_ITEMS)}
    while len(pairs) < 200:
        pairs.add(
            (
                int(torch.randint(NUM_USERS, (1,), generator=g)),
                int(torch.randint(NUM_ITEMS, (1,), generator=g)),
            )
        )
    edge_index = torch.tensor(sorted(pairs)).t().contiguous()
    data = HeteroData()
    data["user"].num_nodes, data["item"].num_nodes = NUM_USERS, NUM_ITEMS
    modalities = modalities or {"image": 12, "text": 6}
    for name, size in modalities.items():
        data["item"][name] = torch.randn(NUM_ITEMS, size, generator=g)
    data["item"].modalities = list(modalities)
    data[RATES].edge_index = edge_index
    data[REV_RATES].edge_index = edge_index.flip(0)
    return data


@pytest.fixture(scope="module")
def data() -> HeteroData:
    return _data()


@pytest.fixture(scope="module")
def batch(data: HeteroData) -> BPRBatch:
    sampler = BPRSampler(data[RATES].edge_index, NUM_USERS, NUM_ITEMS, batch_size=48, seed=0)
    return next(iter(sampler))


def _base(name: str, data: HeteroData, seed: int = 0) -> Recommender:
    torch.manual_seed(seed)
    return build_model(name, data, {"embedding_dim": DIM, "knn_k": 3})


def _wrapped(name: str, data: HeteroData, seed: int = 0, **options) -> MRdIB:
    config = {f"mrdib_{k}": v for k, v in options.items()}
    return attach_plugin("mrdib", _base(name, data, seed), config)


def _loss(model: Recommender, batch: BPRBatch, seed: int = 1) -> dict[str, torch.Tensor]:
    """Training-mode loss with a fixed noise draw (the pruned graph is fixed by the caller)."""
    torch.manual_seed(seed)
    return model.loss(batch)


# ---------------------------------------------------------------- information blocks


def test_kl_is_zero_when_posterior_equals_prior() -> None:
    zeros = torch.zeros(5, 4)
    assert kl_to_standard_normal(zeros, zeros).item() == 0.0
    # Hand values: mu = 1, sigma^2 = 1 -> 1/2 per dimension; mu = 0, sigma^2 = 2 ->
    # (2 - ln 2 - 1) / 2 per dimension; averaged over the two rows.
    mean = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    log_var = torch.tensor([[0.0, 0.0], [math.log(2), math.log(2)]])
    expected = (1.0 + (1 - math.log(2))) / 2
    assert kl_to_standard_normal(mean, log_var).item() == pytest.approx(expected)
    with pytest.raises(ValueError, match="one shape"):
        kl_to_standard_normal(zeros, torch.zeros(5, 3))


def test_reparameterised_samples_have_the_encoders_mean_and_variance() -> None:
    torch.manual_seed(0)
    encoder = VariationalEncoder(3, 4)
    torch.nn.init.normal_(encoder.log_var.bias)  # variances away from 1
    x = torch.randn(1, 3).expand(40000, 3)
    z, mean, log_var = encoder(x)
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.03, rtol=0)
    torch.testing.assert_close(z.var(0), log_var[0].exp(), atol=0, rtol=0.04)
    # Gradients reach both heads through the sample.
    z.pow(2).mean().backward()
    assert encoder.mean.weight.grad.abs().sum() > 0 and encoder.log_var.weight.grad.abs().sum() > 0
    # Evaluation uses the mean, deterministically.
    encoder.eval()
    z, mean, _ = encoder(x[:2])
    assert torch.equal(z, mean) and torch.equal(encoder(x[:2])[0], z)


def test_club_bound_is_the_pairwise_definition() -> None:
    torch.manual_seed(0)
    club = CLUB(3, 2, hidden_channels=5)
    x, y = torch.randn(7, 3), torch.randn(7, 2)
    mean, log_var = club.conditional(x)
    # log q(y_j | x_i) up to the constant, for all pairs (i, j).
    log_q = -0.5 * ((mean[:, None, :] - y[None, :, :]) ** 2 / log_var.exp()[:, None, :]).sum(-1)
    expected = (log_q.diagonal() - log_q.mean(1)).mean()
    torch.testing.assert_close(club.upper_bound(x, y), expected)
    nll = 0.5 * ((y - mean) ** 2 / log_var.exp() + log_var).mean()
    torch.testing.assert_close(club.fit_loss(x, y), nll)
    with pytest.raises(ValueError, match="paired"):
        club.upper_bound(x, y[:5])


def test_club_bound_trains_the_inputs_and_the_fit_trains_q() -> None:
    torch.manual_seed(0)
    club = CLUB(3, 3, hidden_channels=4)
    x, y = torch.randn(6, 3, requires_grad=True), torch.randn(6, 3, requires_grad=True)
    club.upper_bound(x, y).backward()
    assert x.grad.abs().sum() > 0 and y.grad.abs().sum() > 0
    assert all(p.grad is None for p in club.parameters())
    x.grad = y.grad = None
    club.fit_loss(x, y).backward()
    assert x.grad is None and y.grad is None
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in club.parameters())


def test_club_bound_decreases_when_the_inputs_are_made_independent() -> None:
    torch.manual_seed(0)
    x = torch.randn(400, 4)
    y = x @ torch.randn(4, 4) * 0.5 + 0.5 * torch.randn(400, 4)
    club = CLUB(4, 4, hidden_channels=16)
    optimizer = torch.optim.Adam(club.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        club.fit_loss(x, y).backward()
        optimizer.step()
    dependent = club.upper_bound(x, y).item()
    independent = club.upper_bound(x, y[torch.randperm(400)]).item()
    assert dependent > 1.0, dependent
    assert abs(independent) < 0.1 * dependent, (dependent, independent)


# ---------------------------------------------------------------- the plug-in


def _assert_same_embeddings(a: Embeddings, b: Embeddings) -> None:
    assert type(a) is type(b)
    assert torch.equal(a.user, b.user) and torch.equal(a.item, b.item)
    assert a.modalities.keys() == b.modalities.keys()
    for m, rep in a.modalities.items():
        assert torch.equal(rep, b.modalities[m]), m


@pytest.mark.parametrize("name", modality_models())
def test_attaching_leaves_the_base_unchanged_at_initialisation(name: str, data: HeteroData) -> None:
    plain = _base(name, data).eval()
    wrapped = _wrapped(name, data).eval()
    base_state = wrapped.base.state_dict()
    assert base_state.keys() == plain.state_dict().keys()
    for key, value in plain.state_dict().items():
        assert torch.equal(base_state[key], value), key
    # The wrapper ranks with the base's outputs.
    _assert_same_embeddings(plain(), wrapped())
    users = torch.arange(NUM_USERS)
    assert torch.equal(wrapped.full_scores(users), plain.full_scores(users))
    # Its own parameters come after the base's; detaching gives the base model back.
    own = {k for k in wrapped.state_dict() if not k.startswith("base.")}
    assert own and all(k.startswith(("encoders.", "club.")) for k in own)
    detached = wrapped.base
    assert type(detached) is type(plain)
    _assert_same_embeddings(plain(), detached())


@pytest.mark.parametrize("name", BASES)
def test_loss_parts_and_gradients(name: str, data: HeteroData, batch: BPRBatch) -> None:
    model = _wrapped(name, data)
    model.train()
    model.on_train_epoch_start()
    base_parts = set(model.base.loss(batch))
    parts = _loss(model, batch)
    assert set(parts) == base_parts | MRDIB_PARTS
    assert all(v.dim() == 0 and torch.isfinite(v) for v in parts.values())
    sum(parts.values()).backward()
    for key, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), key
        assert p.grad.abs().sum() > 0, key


@pytest.mark.parametrize("name", BASES)
def test_one_forward_pass_per_step(name: str, data: HeteroData, batch: BPRBatch) -> None:
    model = _wrapped(name, data)
    model.train()
    model.on_train_epoch_start()
    calls = []
    for module in model.base.modules():
        module.register_forward_hook(lambda *_: calls.append(1))
    model.base.loss(batch)
    alone = len(calls)
    calls.clear()
    _loss(model, batch)
    # the plug-in reuses the base's pass: no more module calls than the base's own loss (VBPR's
    # loss alone projects the batch rows through its modules instead of one full pass)
    assert 0 < len(calls) <= alone
    assert len(calls) == alone or name == "vbpr"


@pytest.mark.parametrize("switch", sorted(REMOVED))
def test_each_switch_removes_exactly_its_term(
    switch: str, data: HeteroData, batch: BPRBatch
) -> None:
    full = _wrapped("freedom", data)
    reduced = _wrapped("freedom", data, **{switch: False})
    for model in (full, reduced):
        model.train()
        torch.manual_seed(5)
        model.on_train_epoch_start()  # the same pruned graph for both
    parts, fewer = _loss(full, batch), _loss(reduced, batch)
    assert set(parts) - set(fewer) == REMOVED[switch]
    assert set(fewer) <= set(parts)
    for key, value in fewer.items():
        torch.testing.assert_close(value, parts[key], msg=key)
    if switch == "redundant":
        assert not hasattr(reduced, "club")


def test_loss_parts_equal_their_definitions(data: HeteroData, batch: BPRBatch) -> None:
    """In eval mode the codes are the means, so every part can be recomputed by hand."""
    model = _wrapped("freedom", data, redundant_weight=0.3).eval()
    parts = model.loss(batch)
    out = model.base()
    u = out.user[batch.user]
    pos, neg = batch.pos_item, batch.neg_item
    items = torch.unique(torch.cat([pos, neg]))
    codes = {m: model.encoders[m](out.modalities[m]) for m in ("image", "text")}
    kl = sum(kl_to_standard_normal(codes[m][1][items], codes[m][2][items]) for m in codes) / 2
    torch.testing.assert_close(parts["mrdib_kl"], 1e-3 * kl)
    unique = sum(
        bpr_loss((u * codes[m][0][pos]).sum(-1), (u * codes[m][0][neg]).sum(-1)) for m in codes
    )
    torch.testing.assert_close(parts["mrdib_unique"], 0.1 * unique / 2)
    bound, fit = model.club["image__text"](codes["image"][0][items], codes["text"][0][items])
    torch.testing.assert_close(parts["mrdib_redundant"], 0.3 * bound)
    torch.testing.assert_close(parts["mrdib_club_fit"], fit)
    fused = (u * (out.item[pos] - out.item[neg])).sum(-1)
    best = torch.maximum(*((u * (codes[m][1][pos] - codes[m][1][neg])).sum(-1) for m in codes))
    torch.testing.assert_close(parts["mrdib_synergy"], 0.1 * F.softplus(best - fused).mean())


class _Fixed(Recommender):
    """A base with fixed, hand-set embeddings: 1 user, 2 items, modalities a and b (d = 2)."""

    def __init__(self) -> None:
        torch.nn.Module.__init__(self)
        self.num_users, self.num_items, self._eval_embeddings = 1, 2, None
        self.user = torch.nn.Parameter(torch.tensor([[1.0, 0.0]]))
        self.item = torch.nn.Parameter(torch.tensor([[2.0, 0.0], [1.0, 0.0]]))  # margin 1
        self.a = torch.nn.Parameter(torch.tensor([[0.5, 0.0], [0.0, 0.0]]))  # margin 0.5
        self.b = torch.nn.Parameter(torch.tensor([[3.0, 1.0], [1.0, -1.0]]))  # margin 2

    exposes_modalities = True

    def forward(self) -> Embeddings:
        return Embeddings(self.user, self.item, {"a": self.a, "b": self.b})

    def loss(self, batch: BPRBatch, out: Embeddings | None = None) -> dict[str, torch.Tensor]:
        return {"bpr": self.user.sum() * 0}


def test_hand_built_case() -> None:
    model = MRdIB(_Fixed(), kl_weight=1.0, unique_weight=1.0, redundant=False, synergy_weight=1.0)
    for encoder in model.encoders.values():  # mean = input, log-variance = ln 2
        torch.nn.init.eye_(encoder.mean.weight)
        torch.nn.init.zeros_(encoder.log_var.weight)
        torch.nn.init.constant_(encoder.log_var.bias, math.log(2))
    model.eval()
    batch = BPRBatch(torch.tensor([0]), torch.tensor([0]), torch.tensor([1]))
    parts = model.loss(batch)
    # Synergy: the fused margin 1 against the best modality margin max(0.5, 2) = 2.
    assert parts["mrdib_synergy"].item() == pytest.approx(math.log(1 + math.e))
    # Unique: mean over modalities of -log sigmoid(margin).
    unique = (math.log(1 + math.exp(-0.5)) + math.log(1 + math.exp(-2.0))) / 2
    assert parts["mrdib_unique"].item() == pytest.approx(unique)
    # KL: per item 1/2 sum_k (mu_k^2 + 2 - ln 2 - 1) = |mu|^2 / 2 + const; a: 0.125 and 0
    # (mean 0.0625), b: 5 and 1 (mean 3); averaged over the two modalities.
    const = 2 * (2 - math.log(2) - 1) / 2
    kl = (0.0625 + 3.0) / 2 + const
    assert parts["mrdib_kl"].item() == pytest.approx(kl)
    # The fusion must beat the best modality: raising a's margin above 2 raises the term.
    with torch.no_grad():
        model.base.a[0, 0] = 4.0
    assert model.loss(batch)["mrdib_synergy"].item() == pytest.approx(math.log(1 + math.e**3))


def test_adam_steps_lower_the_loss(data: HeteroData, batch: BPRBatch) -> None:
    model = _wrapped("freedom", data)
    model.train()
    model.on_train_epoch_start()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(5):
        loss = sum(_loss(model, batch).values())  # the same noise draw every step
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("modalities", [{"audio": 5}, {"image": 6, "text": 4, "audio": 5}])
def test_any_number_of_modalities(modalities: dict[str, int], batch: BPRBatch) -> None:
    data = _data(modalities)
    torch.manual_seed(0)
    weights = {m: 1.0 for m in modalities}
    base = build_model(
        "freedom", data, {"embedding_dim": DIM, "knn_k": 3, "modality_weights": weights}
    )
    model = attach_plugin("mrdib", base, {})
    assert model.pairs == [
        (m, n) for j, m in enumerate(modalities) for n in list(modalities)[j + 1 :]
    ]
    model.train()
    model.on_train_epoch_start()
    parts = _loss(model, batch)
    if len(modalities) == 1:  # no pair of modalities: nothing is redundant
        assert parts["mrdib_redundant"].item() == 0.0 and not model.club
    sum(parts.values()).backward()
    assert all(model.encoders[m].mean.weight.grad.abs().sum() > 0 for m in modalities)


def test_scores_and_evaluation(data: HeteroData) -> None:
    model = _wrapped("freedom", data)
    model.train()
    model.on_train_epoch_start()
    model.eval()
    scores = model.full_scores(torch.arange(NUM_USERS))
    assert scores.shape == (NUM_USERS, NUM_ITEMS)
    torch.testing.assert_close(scores, model.base.full_scores(torch.arange(NUM_USERS)))
    train = data[RATES].edge_index
    evaluator = FullRankEvaluator(train, train, NUM_USERS, NUM_ITEMS, ks=(5,))
    assert all(v == 0.0 for v in evaluator.evaluate(model.full_scores).values())
    parts = model.item_representations()
    assert parts["mrdib_image"].shape == parts["mrdib_text"].shape == (NUM_ITEMS, DIM)


def test_bad_inputs(data: HeteroData) -> None:
    with pytest.raises(ValueError, match="unknown plugin 'nope'; available: mrdib"):
        attach_plugin("nope", _base("freedom", data), {})
    with pytest.raises(ValueError, match="model 'lightgcn' does not. Models that do: .*freedom"):
        attach_plugin("mrdib", _base("lightgcn", data), {})
    with pytest.raises(ValueError, match="kl_weight .*>= 0"):
        _wrapped("freedom", data, kl_weight=-1.0)
    for name in ("kl", "unique", "redundant", "synergy"):  # NaN or inf: refused, not a NaN loss
        for bad in (float("nan"), float("inf")):
            with pytest.raises(
                ValueError,
                match=rf"MRdIB: {name}_weight \(mrdib_{name}_weight\) must be a finite number "
                rf">= 0, got {bad!r}",
            ):
                _wrapped("freedom", data, **{f"{name}_weight": bad})
    with pytest.raises(ValueError, match="unique .*true or false"):
        _wrapped("freedom", data, unique="yes")
    with pytest.raises(ValueError, match=r"club_hidden .*in \[1, 65536\]"):
        _wrapped("freedom", data, club_hidden=0)
    off = {"kl": False, "unique": False, "redundant": False, "synergy": False}
    with pytest.raises(ValueError, match="are all false, so the plug-in adds nothing"):
        _wrapped("freedom", data, **off)


# ---------------------------------------------------------------- configuration and CLI


def test_plugin_config_layer() -> None:
    alone = load_config("freedom", "synthetic")
    assert alone["plugin"] is None and not any(k.startswith("mrdib_") for k in alone)
    config = load_config("freedom", "synthetic", {"plugin": "mrdib", "mrdib_kl_weight": 0.5})
    path = CONFIG_DIR / "plugins" / "mrdib.yaml"
    declared = load_yaml(path)
    assert set(declared) == set(plugin_keys("mrdib"))  # every argument, nothing else
    assert config["mrdib_kl_weight"] == 0.5 and config["mrdib_unique"] is True
    # Every key is documented on its line.
    lines = [line for line in path.read_text().splitlines() if line.startswith("mrdib_")]
    assert len(lines) == len(declared) and all(" # " in line for line in lines)
    with pytest.raises(ConfigError, match="unknown plugin 'nope'; available: mrdib"):
        load_config("freedom", "synthetic", {"plugin": "nope"})
    with pytest.raises(ConfigError, match="unknown key 'mrdib_kl_weight'"):
        load_config("freedom", "synthetic", {"mrdib_kl_weight": 0.5})  # no plugin attached
    with pytest.raises(ConfigError, match="unknown key 'mrdib_kl_wieght'"):
        load_config("freedom", "synthetic", {"plugin": "mrdib", "mrdib_kl_wieght": 0.5})


def test_cli_errors(tiny_cli_argv, capsys) -> None:
    assert main(tiny_cli_argv("freedom", "--plugin", "nope")) == 2
    assert "unknown plugin 'nope'" in capsys.readouterr().err
    argv = tiny_cli_argv("lightgcn", "--plugin", "mrdib")
    knn = argv.index("--knn_k")  # not a LightGCN key
    assert main(argv[:knn] + argv[knn + 2 :]) == 2
    assert "model 'lightgcn' does not" in capsys.readouterr().err


def test_cli_end_to_end_and_resume(tmp_path: Path, tiny_cli_argv) -> None:
    argv = tiny_cli_argv("freedom", "--plugin", "mrdib")
    assert main(argv) == 0
    full = json.loads((tmp_path / "run" / "results.json").read_text())
    assert full["plugin"] == full["config"]["plugin"] == "mrdib"
    assert full["config"]["mrdib_unique_weight"] == 0.1
    for record in full["history"]:
        assert {"bpr", "mm", "reg", *MRDIB_PARTS} == set(record["loss"])
        assert all(math.isfinite(v) for v in record["loss"].values())
    # The finished run reloads, plug-in included, from its config and best.pt.
    model, data, _ = load_run(tmp_path / "run")
    assert isinstance(model, MRdIB) and len(recommend(model, data, [0], 3)[0]["items"]) == 3

    # One epoch, then resumed for a second from its checkpoint: the same run.
    part = tmp_path / "part"
    assert main([*argv, "--epochs", "1", "--output", str(part)]) == 0
    config = json.loads((part / "config.json").read_text())
    (part / "config.json").write_text(json.dumps({**config, "epochs": 2}))
    (part / "results.json").unlink()
    assert main(["--resume", str(part), "--quiet"]) == 0
    resumed = json.loads((part / "results.json").read_text())
    strip = [{k: v for k, v in h.items() if not k.endswith("_s")} for h in full["history"]]
    assert [
        {k: v for k, v in h.items() if not k.endswith("_s")} for h in resumed["history"]
    ] == strip
    assert resumed["test"] == full["test"]
    assert main(["--resume", str(part), "--plugin", "none"]) == 2  # the saved config decides
