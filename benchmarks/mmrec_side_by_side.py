"""Seconds per epoch of MMRec's own models on one of our datasets, at our settings.

Copies an MMRec checkout (``--mmrec``, e.g. ``git clone https://github.com/enoche/MMRec``) to
``--work``, points it at ``--data-root/<dataset>`` (MMRec reads the first two modalities of the
dataset as its ``v_feat`` and ``t_feat``), narrows each model's YAML grid to the point of our
``configs/models/<model>.yaml`` (table ``POINTS``), sets ``epochs: 2`` and ``use_gpu`` from
``--device``, and runs ``python main.py -m <Model> -d <dataset>`` once per model and round with
``OMP_NUM_THREADS=1``. These edits keep MMRec running on today's libraries and on a CPU and change
no computation: scipy's removed ``dok_matrix._update`` becomes ``_dict.update``, numpy's removed
``np.float`` becomes ``float``, ``torchvision`` is stubbed when missing (MMRec imports it for
raw images only), ``.cuda()`` in a model file becomes ``.to(self.device)`` (GRCN, MGCN and
LATTICE hard-code CUDA), LayerGCN imports ``common`` where it lives (not ``models.common``),
DualGNN's initial ``result_embed`` is detached (on a CPU it stays a Parameter that its forward
pass cannot replace; the value is overwritten before use), and a one-dimensional
``torch_scatter.scatter_add`` (MGCN's graph normalisation, through ``utils.utils``) is provided
when ``torch_scatter`` is missing. DualGNN's user graph file and DA-MRS's item graph file,
which MMRec's repository does not ship, are written from the train interactions
(``write_user_graph``, ``write_item_graph``). Prints MMRec's logged training seconds per epoch
(mean of the epochs, the lowest over ``--rounds``) and
the process's peak RSS; compare with ``benchmarks/speed.py`` on the same dataset::

    python benchmarks/mmrec_side_by_side.py --mmrec ../MMRec --data-root ../shared/data
    OMP_NUM_THREADS=1 python benchmarks/speed.py --dataset tiktok --data-root ../shared/data \\
        --device cpu --epochs 2 --rounds 2 --models lightgcn vbpr freedom lgmrec bm3 mgcn mmgcn grcn

``--accuracy`` compares accuracy instead: MMRec trains each model to its own early stopping
(``epochs: 1000``, ``stopping_step: 20`` on valid Recall@20, as our ``run.py``'s patience
20; MMRec stops after the 21st evaluation without a gain, ours after the 20th) once per
``--seeds`` value (MMRec's ``seed`` grid), and the valid and test metrics at its best epoch
are printed per seed with their mean and standard deviation, beside the model's log in
``--work/logs/``. Our side is ``run.py`` with the same ``--seed``::

    python benchmarks/mmrec_side_by_side.py --mmrec ../MMRec --data-root ../shared/data \\
        --accuracy --seeds 2024 2025 2026 --models FREEDOM BM3
    OMP_NUM_THREADS=1 python run.py --model freedom --dataset tiktok --data-root ../shared/data \\
        --device cpu --quiet --baseline null --seed 2024

MMRec's Python needs ``pandas``, ``lmdb`` and ``pyyaml`` (``--python`` picks the interpreter).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

#: MMRec model name -> YAML keys set to our configs/models/<name>.yaml point (TikTok)
POINTS: dict[str, dict[str, object]] = {
    "LightGCN": {"n_layers": [2], "reg_weight": [1e-4]},
    "VBPR": {"reg_weight": [5.0]},
    "FREEDOM": {"reg_weight": [1e-4], "dropout": [0.8], "mm_image_weight": 0.5},
    "LGMRec": {},  # MMRec's file holds one point, ours
    "BM3": {"n_layers": [1], "dropout": [0.5], "reg_weight": [0.1]},
    "MGCN": {"cl_loss": [0.01]},
    "MMGCN": {"learning_rate": [1e-3], "reg_weight": [1e-3]},
    # MMRec's GRCN routes 3 times (n_layers) but its routing moves no prototype: our
    # num_routing 0 computes the same model (our TikTok point); compare with both of ours
    "GRCN": {"learning_rate": [1e-3], "reg_weight": [1e-3]},
    "LATTICE": {"learning_rate": [1e-3], "reg_weight": [1e-5]},
    # reads the user graph that MMRec's preprocessing script writes (written here, see below)
    "DualGNN": {"learning_rate": [1e-4], "reg_weight": [1e-3]},
    "LayerGCN": {"n_layers": [4], "reg_weight": [1e-3], "dropout": [0.1]},
    # the DA-MRS authors' TikTok run and our per_dataset point (behaviour graph written below)
    "DAMRS": {"n_ui_layers": [3], "knn_k": 5, "kl_weight": [0.1], "neighbor_weight": [0.01]},
}
#: a one-dimensional ``torch_scatter.scatter_add``, all that MMRec's ``utils.utils`` uses
SCATTER_SHIM = """import torch


def scatter_add(src, index, dim=-1, out=None, dim_size=None):
    if src.dim() != 1 or dim not in (0, -1) or out is not None:
        raise NotImplementedError("shim: one-dimensional scatter_add only")
    n = int(index.max()) + 1 if dim_size is None else dim_size
    return torch.zeros(n, dtype=src.dtype, device=src.device).index_add_(0, index, src)
"""
TRAIN = re.compile(r"epoch (\d+) training \[time: ([0-9.]+)s")
#: one seed's summary in MMRec's closing "All Over" block: the point, best valid, best test
SUMMARY = re.compile(
    r"Parameters: \[([^\]]*)\]=\(([^)]*)\),\s*best valid: (.*?),\s*best test: (.*)"
)
FINISHED = re.compile(r"best eval result in epoch (\d+)")
POINT_START = re.compile(r"=+\d+/\d+: Parameters:")
METRIC = re.compile(r"([a-z]+@\d+): ([0-9.]+)")
#: metrics of the accuracy table, MMRec's names
SHOWN = ("recall@10", "recall@20", "ndcg@10", "ndcg@20")


def _set_keys(path: Path, keys: dict[str, object]) -> None:
    lines = path.read_text().splitlines()
    for key, value in keys.items():
        text = f"{key}: {json.dumps(value)}"
        hits = [i for i, line in enumerate(lines) if line.split(":")[0].strip() == key]
        if hits:
            lines[hits[0]] = text
        else:
            lines.append(text)
    path.write_text("\n".join(lines) + "\n")


def _train_matrix(inter: Path):  # noqa: ANN202 (scipy is imported only when needed)
    """The binary users x items train matrix of an MMRec ``.inter`` file (``x_label`` 0)."""
    import scipy.sparse as sp

    with inter.open(encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    try:
        columns = [header.index(name) for name in ("userID", "itemID", "x_label")]
    except ValueError:
        raise SystemExit(f"{inter}: header {header} lacks userID, itemID or x_label") from None
    table = np.loadtxt(inter, delimiter="\t", skiprows=1, usecols=columns, dtype=np.int64, ndmin=2)
    train = table[table[:, 2] == 0]
    rated = sp.csr_matrix(
        (np.ones(len(train)), (train[:, 0], train[:, 1])),
        shape=(int(table[:, 0].max()) + 1, int(table[:, 1].max()) + 1),
    )
    rated.data[:] = 1.0  # a pair listed twice counts once, as MMRec's sets
    return rated


def _cooccurrence_lists(rated, most: int, min_count: int = 1) -> dict[int, list[list]]:  # noqa: ANN001
    """Per row of ``rated``, the other rows sharing at least ``min_count`` columns with it, most
    shared first (ties by index), at most ``most``, and those counts: ``{row: [rows, counts]}``
    for every row with one (the sparse product ``rated rated^T``)."""
    shared = (rated @ rated.T).tocsr()
    shared.setdiag(0)
    shared.data[shared.data < min_count] = 0
    shared.eliminate_zeros()
    lists = {}
    for row in range(shared.shape[0]):
        span = slice(shared.indptr[row], shared.indptr[row + 1])
        others, counts = shared.indices[span], shared.data[span]
        order = np.lexsort((others, -counts))[:most]
        lists[row] = [others[order].tolist(), counts[order].astype(float).tolist()]
    return lists


def write_user_graph(inter: Path, out: Path, most: int = 200) -> None:
    """MMRec's DualGNN input, what its ``preprocessing/dualgnn-gen-u-u-matrix.py`` writes (with
    a dense users x users matrix and a Python loop over user pairs): for every user id, the users
    sharing train items with it, most shared items first, at most ``most``, and those counts."""
    np.save(out, _cooccurrence_lists(_train_matrix(inter), most), allow_pickle=True)


def write_item_graph(inter: Path, out: Path, most: int = 2, min_count: int = 2) -> None:
    """MMRec's DA-MRS input (``item_graph_dict_file``; the DA-MRS authors' ``build_iib_graph.py
    --topk=2``, not in MMRec's repository): for every item with one, the items with at least
    ``min_count`` common train users, most first, at most ``most``, and those counts."""
    lists = _cooccurrence_lists(_train_matrix(inter).T.tocsr(), most, min_count)
    np.save(out, {item: pair for item, pair in lists.items() if pair[0]}, allow_pickle=True)


def prepare(args: argparse.Namespace) -> Path:
    """A patched copy of MMRec whose dataset folder links to ours; returns its ``src``."""
    work = Path(args.work)
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(args.mmrec, work, ignore=shutil.ignore_patterns(".git"))
    src = work / "src"
    folder = Path(args.data_root).resolve() / args.dataset
    feats = sorted(p.name for p in folder.glob("*_feat.npy"))
    if len(feats) < 2:
        raise SystemExit(f"{folder}: MMRec needs two *_feat.npy files, found {feats}")
    vision = "image_feat.npy" if "image_feat.npy" in feats else feats[0]
    text = next(f for f in (["text_feat.npy"] + feats) if f in feats and f != vision)
    data = work / "data" / args.dataset
    data.mkdir(parents=True, exist_ok=True)
    for name in [f"{args.dataset}.inter", vision, text]:
        (data / name).symlink_to(folder / name)
    if "DualGNN" in args.models:
        write_user_graph(folder / f"{args.dataset}.inter", data / "user_graph_dict.npy")
    if "DAMRS" in args.models:
        write_item_graph(folder / f"{args.dataset}.inter", data / "item_graph_dict_2.npy")
    (src / "configs" / "dataset" / f"{args.dataset}.yaml").write_text(
        "USER_ID_FIELD: userID\nITEM_ID_FIELD: itemID\nTIME_FIELD: timestamp\n"
        "filter_out_cod_start_users: True\n"
        f"inter_file_name: '{args.dataset}.inter'\nvision_feature_file: '{vision}'\n"
        f"text_feature_file: '{text}'\nuser_graph_dict_file: 'user_graph_dict.npy'\n"
        'field_separator: "\\t"\n'
    )
    overall = {"epochs": 1000 if args.accuracy else 2, "use_gpu": args.device != "cpu"}
    if args.accuracy:
        overall["seed"] = args.seeds
    _set_keys(src / "configs" / "overall.yaml", overall)
    for model, keys in POINTS.items():
        _set_keys(src / "configs" / "model" / f"{model}.yaml", keys)
    for path in src.rglob("*.py"):
        code = path.read_text()
        fixed = code.replace("A._update(data_dict)", "A._dict.update(data_dict)")
        fixed = re.sub(r"np\.float\b", "float", fixed)
        if path.parent.name == "models" and path.stem in {m.lower() for m in POINTS}:
            fixed = fixed.replace(".cuda()", ".to(self.device)")
        if path.parent.name == "models" and path.stem == "layergcn":  # the modules' home
            fixed = fixed.replace("from models.common.", "from common.")
        if path.parent.name == "models" and path.stem == "dualgnn":
            # on a CPU `.to` returns the Parameter itself, which forward() cannot overwrite with
            # a tensor (on CUDA it returns a copy); forward() overwrites it before any use
            fixed = fixed.replace("dim_x)))).to(self.device)", "dim_x)))).detach().to(self.device)")
        if fixed != code:
            path.write_text(fixed)
    stubs = work / "stubs" / "torchvision" / "transforms"
    stubs.mkdir(parents=True)
    (stubs.parent / "__init__.py").write_text("")
    (stubs / "__init__.py").write_text("def Compose(*a, **k):\n    raise NotImplementedError\n")
    stub = "def {}(*a, **k):\n    raise NotImplementedError\n"
    (stubs / "functional.py").write_text(stub.format("pad") + stub.format("resize"))
    (work / "scatter_shim" / "torch_scatter").mkdir(parents=True)
    (work / "scatter_shim" / "torch_scatter" / "__init__.py").write_text(SCATTER_SHIM)
    return src


def run_model(src: Path, model: str, args: argparse.Namespace) -> tuple[float, float, str]:
    """(mean training seconds per epoch, peak RSS MB, its output) of one MMRec run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    paths = [str(src.parent / "stubs")] if args.stub_torchvision else []
    paths += [str(src.parent / "scatter_shim")] if args.shim_scatter else []
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(
            [args.python, "main.py", "-m", model, "-d", args.dataset],
            cwd=src,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        log.seek(0)
        output = log.read()
    times = [float(m.group(2)) for m in TRAIN.finditer(output)]
    if proc.returncode != 0 or not times:
        tail = output.strip().splitlines()[-3:]
        raise RuntimeError(f"MMRec {model} failed (exit {proc.returncode}): {' | '.join(tail)}")
    return float(np.mean(times)), usage.ru_maxrss / 1024, output


def seed_results(output: str) -> list[dict[str, object]]:
    """Per seed of one MMRec run (its ``seed`` grid, in order): the seed, MMRec's best epoch
    (0-based; ``None`` if it ran out of epochs) and the valid and test metrics there."""
    runs, _, closing = output.rpartition("All Over")
    # each grid point's training starts with "=========<i>/<n>: Parameters:..."
    epochs = []
    for part in POINT_START.split(runs)[1:]:
        found = FINISHED.search(part)
        epochs.append(int(found.group(1)) if found else None)
    rows = []
    for i, match in enumerate(SUMMARY.finditer(closing)):
        names = [n.strip().strip("'\"") for n in match.group(1).split(",")]
        values = [v.strip() for v in match.group(2).split(",")]
        point = dict(zip(names, values))
        rows.append(
            {
                "seed": point.get("seed"),
                "best_epoch": epochs[i] if i < len(epochs) else None,
                "valid": {k: float(v) for k, v in METRIC.findall(match.group(3))},
                "test": {k: float(v) for k, v in METRIC.findall(match.group(4))},
            }
        )
    if not rows:
        raise RuntimeError("no closing summary (best valid / best test) in MMRec's output")
    return rows


def accuracy_table(model: str, rows: list[dict[str, object]]) -> list[str]:
    """Markdown rows: one per seed, then the mean and standard deviation over the seeds."""
    lines = []
    for row in rows:
        test = [f"{row['test'][k]:.4f}" for k in SHOWN]
        lines.append(
            f"| {model} | {row['seed']} | {row['valid']['recall@20']:.4f} | "
            + " | ".join(test)
            + f" | {row['best_epoch']} |"
        )
    if len(rows) > 1:
        cells = []
        for k in SHOWN:
            values = np.array([row["test"][k] for row in rows])
            cells.append(f"{values.mean():.4f} ± {values.std(ddof=1):.4f}")
        valid = np.mean([row["valid"]["recall@20"] for row in rows])
        mean = f"| {model} | mean of {len(rows)} | {valid:.4f} | "
        lines.append(mean + " | ".join(cells) + " | |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mmrec", required=True, help="an MMRec checkout (with src/main.py)")
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--dataset", default="tiktok")
    parser.add_argument("--models", nargs="+", default=list(POINTS), choices=list(POINTS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--python", default=sys.executable, help="interpreter for MMRec")
    parser.add_argument("--work", default="/tmp/mmrec-side-by-side")
    parser.add_argument(
        "--accuracy", action="store_true", help="train to early stopping; report test metrics"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[2024], help="with --accuracy: MMRec's seeds"
    )
    args = parser.parse_args()
    if not (Path(args.mmrec) / "src" / "main.py").is_file():
        parser.error(f"--mmrec {args.mmrec}: no src/main.py (an MMRec checkout expected)")
    src = prepare(args)
    # the stub only where MMRec's interpreter has no torchvision
    found = subprocess.run([args.python, "-c", "import torchvision"], capture_output=True)
    args.stub_torchvision = found.returncode != 0
    found = subprocess.run([args.python, "-c", "import torch_scatter"], capture_output=True)
    args.shim_scatter = found.returncode != 0
    if args.accuracy:
        compare_accuracy(src, args)
        return
    print("| model | MMRec s/epoch (lowest of rounds) | per round | peak MB |")
    print("|---|---|---|---|")
    for model in args.models:
        rounds = []
        for _ in range(args.rounds):
            try:
                rounds.append(run_model(src, model, args)[:2])
            except RuntimeError as e:
                print(f"| {model} | failed: {e} | | |", flush=True)
                break
        if rounds:
            best = min(r[0] for r in rounds)
            per = " / ".join(f"{r[0]:.2f}" for r in rounds)
            print(f"| {model} | {best:.2f} | {per} | {max(r[1] for r in rounds):.0f} |", flush=True)


def compare_accuracy(src: Path, args: argparse.Namespace) -> None:
    """One MMRec run per model over all ``--seeds``; its per-seed metrics as a table."""
    logs = Path(args.work) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print("| model | seed | valid R@20 | test R@10 | R@20 | N@10 | N@20 | best epoch (0-based) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for model in args.models:
        try:
            seconds, _, output = run_model(src, model, args)
            (logs / f"{model}.log").write_text(output)
            rows = seed_results(output)
        except RuntimeError as e:
            print(f"| {model} | failed: {e} | | | | | | |", flush=True)
            continue
        for line in accuracy_table(model, rows):
            print(line, flush=True)
        print(f"<!-- {model}: {seconds:.2f} s/epoch, log {logs / (model + '.log')} -->", flush=True)


if __name__ == "__main__":
    main()
