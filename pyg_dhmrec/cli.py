"""Command line: ``python run.py [--model M] [--dataset D] [--key value ...]`` trains (with
``--resume``, ``--grid`` or ``--seeds``); ``compare``, ``plot``, ``recommend`` and ``export`` as
first word work on finished run folders."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from pyg_dhmrec import distributed
from pyg_dhmrec.atomic_files import ensure_folder
from pyg_dhmrec.config import (
    CONFIG_DIR,
    MODEL_FILE_TRAINER_KEYS,
    ConfigError,
    available,
    available_datasets,
    baseline_applies,
    baseline_config,
    coerce,
    key_help,
    load_config,
    load_yaml,
    parse_cli_overrides,
)
from pyg_dhmrec.data.download import DownloadError
from pyg_dhmrec.data.mmrec_format import DataFormatError
from pyg_dhmrec.experiment import (
    CONFIG_FILE,
    ExperimentError,
    baseline_comparison,
    check_plugin_options,
    claim_run_folder,
    compare_runs,
    export_embeddings,
    grid_axes,
    load_grid,
    load_run,
    recommend,
    run_config,
    run_grid,
    run_or_resume,
    run_seeds,
)
from pyg_dhmrec.loader import load_data_and_model
from pyg_dhmrec.models import model_class, model_keys
from pyg_dhmrec.plots import MissingExtraError
from pyg_dhmrec.plugins import check_plugin, plugin_keys
from pyg_dhmrec.train import (
    CHECKPOINT,
    RESULTS,
    Trainer,
    resolve_device,
    save_results,
    seed_everything,
)

log = logging.getLogger("pyg_dhmrec")

DEFAULT_MODEL = "dhmrec"
DEFAULT_DATASET = "synthetic"
TRAIN_LOG = "train.log"
# The keys --help lists with their defaults (every other key works the same way).
COMMON_KEYS = ("epochs", "patience", "learning_rate", "batch_size", "embedding_dim", "seed")
# run.py, the pyg-dhmrec script, or python -m pyg_dhmrec (set by __main__.py)
PROG = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "run.py"


def _common_keys_help() -> str:
    lines = ["common keys (--key value; defaults from configs/overall.yaml):"]
    for key, text in key_help(COMMON_KEYS).items():
        lines.append(f"  --{key:<22}{text}")
    lines.append(
        "Any key of configs/overall.yaml, of the dataset's or of the model's YAML is set the\n"
        "same way (e.g. --topk [10,20], --num_ui_layers 3, --modalities '{image: img.npy}');\n"
        "the YAML files ship inside the package (pyg_dhmrec/configs)."
    )
    return "\n".join(lines)


class _Warned(argparse.Action):
    """An option that keeps its last value, as argparse does, but says so when given twice
    (argparse drops the earlier value silently)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        given = namespace.__dict__.setdefault("_given", {})
        if self.dest in given:
            first, last = (
                os.fspath(v) if isinstance(v, Path) else v for v in (given[self.dest], values)
            )
            log.warning("%s given twice (%r, then %r); the last one is used", option, first, last)
        given[self.dest] = values
        setattr(namespace, self.dest, values)


def _parser(**kwargs: Any) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` whose options taking a value warn when given twice."""
    parser = argparse.ArgumentParser(**kwargs)
    parser.register("action", None, _Warned)  # the default action: argparse's "store"
    parser.register("action", "store", _Warned)
    return parser


def build_parser() -> argparse.ArgumentParser:
    defaults = key_help(("data_root", "device"))
    parser = _parser(
        prog=PROG,
        allow_abbrev=False,  # else --seed would be read as --seeds
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train and evaluate a multimodal recommender (MMRec protocol).\nOther "
        f"commands, as first word: compare, plot, recommend, export ({PROG} <command> --help).",
        epilog=_common_keys_help(),
    )
    parser.add_argument("--model", help=f"one of {available('models')} (default {DEFAULT_MODEL})")
    parser.add_argument(
        "--dataset",
        help=f"one of {available_datasets()} (default {DEFAULT_DATASET}), the name of a folder "
        "<data-root>/<name>/ with <name>.inter and *_feat.npy files (no YAML needed), or the "
        "path to such a folder",
    )
    parser.add_argument(
        "--plugin",
        help=f"plug-in objective wrapped around the model: one of {available('plugins')}, "
        "or none (default: the config's plugin, null)",
    )
    parser.add_argument(
        "--baseline",
        help="model trained after the run on the same data, seed and protocol and compared "
        "with it (ratios of test R@20, N@20, paired t-test), or none (default: the config's "
        "baseline; synthetic: lightgcn)",
    )
    parser.add_argument(
        "--data-root",
        dest="data_root",
        help=f"{defaults['data_root']}; relative to the current folder",
    )
    parser.add_argument(
        "--output",
        help="run folder for results.json, best.pt and train.log (default "
        "runs/<model>-<dataset>-<date-time>, relative to the current folder)",
    )
    parser.add_argument("--device", help=defaults["device"])
    parser.add_argument(
        "--quiet", action="store_true", help="no progress or download bars, log lines only"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN",
        type=folder_path,  # an empty RUN would read as no --resume: a plain run
        help="continue the run folder RUN from its checkpoint.pt",
    )
    parser.add_argument(
        "--grid",
        metavar="YAML",
        type=nonempty_text,  # an empty YAML would read as no --grid: a plain run
        help="grid file (key: [values]); one run per point; a bare name (dhmrec) is a grid "
        f"shipped in configs/grids ({', '.join(available('grids'))})",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        metavar="N",
        help="run seeds seed..seed+N-1; mean and std of the test metrics (seeds.json)",
    )
    return parser


def _name_option(args: argparse.Namespace, option: str, default: str, source: str) -> str:
    """``args.<option>``: unset is the default; a path (``--dataset`` may be one) is its string;
    anything else must be a non-empty name (errors say ``--<option>`` on the command line, the
    argument's name from Python)."""
    value = getattr(args, option, None)
    if value is None:
        return default
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        label = f"--{option}" if source == "command line" else f"{source}: {option}"
        raise ConfigError(
            f"{label} must be a non-empty name{' or folder path' * (option == 'dataset')}, "
            f"got {value!r} (leave it out for the default, {default})"
        )
    return value


def resolve_config(
    args: argparse.Namespace,
    extra: Sequence[str],
    keys: Mapping[str, Any] | None = None,
    source: str = "command line",
) -> dict[str, Any]:
    """Merge the YAML layers and the command line into one checked configuration.

    ``args`` may hold any of the parser's options (missing ones are unset); ``keys`` are
    configuration keys given as Python values (``pyg_dhmrec.fit``), merged like ``extra``;
    ``source`` names where they came from in errors.
    """
    model = _name_option(args, "model", DEFAULT_MODEL, source)
    dataset = _name_option(args, "dataset", DEFAULT_DATASET, source)
    overrides = {**parse_cli_overrides(extra), **(keys or {})}
    for key in ("data_root", "output", "device"):  # a Namespace may hold only some options
        if getattr(args, key, None) is not None:
            if key in overrides:  # --data_root X beside --data-root Y: neither may win silently
                raise ConfigError(
                    f"{source}: {key} given twice ({overrides[key]!r} and "
                    f"{getattr(args, key)!r}); give it once"
                )
            overrides[key] = getattr(args, key)
    plugin = getattr(args, "plugin", None)
    if plugin is not None:
        overrides["plugin"] = None if plugin.lower() in ("none", "null") else plugin
    baseline = getattr(args, "baseline", None)
    if baseline is not None:
        overrides["baseline"] = None if baseline.lower() in ("none", "null") else baseline
    if getattr(args, "quiet", False):
        if "progress" in overrides:  # --quiet wins, but a malformed --progress is still refused
            coerce("progress", overrides["progress"], True, source)
        overrides["progress"] = False
    config = load_config(model, dataset, overrides, source=source)
    model_class(model)  # unknown model -> clear error
    declared = set(load_yaml(CONFIG_DIR / "models" / f"{model}.yaml")) - {"per_dataset"}
    unused = declared - model_keys(model) - MODEL_FILE_TRAINER_KEYS
    if unused:
        raise ConfigError(
            f"configs/models/{model}.yaml: key(s) {', '.join(sorted(unused))} are not "
            f"arguments of the model; it takes {', '.join(sorted(model_keys(model)))}"
        )
    plugin = config["plugin"]
    if plugin is not None:
        check_plugin(plugin, model)
        check_plugin_options(config)  # before the data is read or a folder written
        declared = set(load_yaml(CONFIG_DIR / "plugins" / f"{plugin}.yaml")) - {"per_dataset"}
        unused = declared - set(plugin_keys(plugin))
        if unused:
            raise ConfigError(
                f"configs/plugins/{plugin}.yaml: key(s) {', '.join(sorted(unused))} are not "
                f"arguments of the plugin; it takes {', '.join(sorted(plugin_keys(plugin)))}"
            )
    return config


def _option_words(extra: Sequence[str]) -> list[str]:
    """The options (without their values) and stray words of ``extra``."""
    words, i = [], 0
    while i < len(extra):
        token = extra[i]
        option = token.startswith("--")
        words.append(token.split("=", 1)[0] if option else token)
        takes_value = option and "=" not in token and i + 1 < len(extra)
        i += 2 if takes_value and not extra[i + 1].startswith("--") else 1
    return words


def resume_config(args: argparse.Namespace, extra: Sequence[str]) -> dict[str, Any]:
    """The configuration saved in the ``--resume`` folder (``--device``/``--quiet`` may change)."""
    folder = Path(args.resume)
    if not folder.exists():
        raise ConfigError(f"--resume {folder}: no such folder; expected a run folder of run.py")
    if not folder.is_dir():
        raise ConfigError(f"--resume {folder}: a file; expected a run folder of run.py")
    if not (folder / CHECKPOINT).is_file() and (folder / CONFIG_FILE).is_file():
        raise ConfigError(  # a run killed in its first epoch: nothing to continue from
            f"--resume {folder}: no {CHECKPOINT}: the run there stopped before its first epoch "
            f"ended; start it again, with the options its {CONFIG_FILE} records and --output "
            f"{folder}"
        )
    if not (folder / CHECKPOINT).is_file():
        raise ConfigError(
            f"--resume {folder}: no {CHECKPOINT} in that folder; expected a run folder "
            f"written by run.py (config.json and {CHECKPOINT})"
        )
    fixed = [
        f"--{k}"
        for k in ("model", "dataset", "plugin", "baseline", "data_root", "output", "grid", "seeds")
    ]
    given = [o for o in fixed if getattr(args, o[2:]) is not None] + _option_words(extra)
    if given:
        raise ConfigError(
            f"--resume {folder} continues with the folder's config.json; drop "
            f"{', '.join(given)} (only --device and --quiet may be given)"
        )
    config = run_config(folder)
    config["output"] = str(folder)
    if args.device is not None:
        config["device"] = args.device
    if args.quiet:
        config["progress"] = False
    return config


def default_output(config: Mapping[str, Any], suffix: str = "") -> Path:
    """``config['output']``, else ``runs/<model>[+<plugin>]-<dataset>[-suffix | -<time>]``."""
    if config["output"]:
        return Path(config["output"])
    tail = suffix or time.strftime("%Y%m%d-%H%M%S")
    model = config["model"] + (f"+{config['plugin']}" if config.get("plugin") else "")
    return Path(f"runs/{model}-{config['dataset']}-{tail}")


def interrupted_message(folder: Path) -> str:
    """What a run stopped by Ctrl-C (SIGINT) leaves, and how to continue it."""
    if (folder / CHECKPOINT).is_file():
        return (
            f"interrupted (Ctrl-C); {folder / CHECKPOINT} holds the last finished epoch: "
            f"continue with {PROG} --resume {folder}"
        )
    return f"interrupted (Ctrl-C) before the first epoch ended; {folder} holds no checkpoint"


class _RunLogHandler(logging.FileHandler):
    """``train.log``'s handler: a write the system refuses (a full disk) is said once on
    stderr and the file is left as it is, instead of logging's traceback for every line."""

    failed = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.failed:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        if not self.failed:
            self.failed = True
            error = sys.exc_info()[1]
            reason = getattr(error, "strerror", None) or error
            print(
                f"warning: {self.baseFilename}: cannot be written ({reason}); the "
                "run goes on, its log only on the console",
                file=sys.stderr,
            )


class _RunLog:
    """Copies the library's log lines into ``<run folder>/train.log`` (appended on resume)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        ensure_folder(self.path.parent, "output")
        self.handler = _RunLogHandler(self.path, mode="a", encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        self.handler.setLevel(logging.INFO)
        logger = logging.getLogger("pyg_dhmrec")
        self.level = logger.level
        if logger.getEffectiveLevel() > logging.INFO:  # Python use without logging set up
            logger.setLevel(logging.INFO)
        logger.addHandler(self.handler)

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if isinstance(error, KeyboardInterrupt):  # on the console too: how to continue
            log.error("%s", interrupted_message(self.path.parent))
        elif error is not None:  # the log ends with why the run stopped
            self.handler.emit(
                logging.LogRecord("pyg_dhmrec", logging.ERROR, "", 0, f"error: {error}", None, None)
            )
        logger = logging.getLogger("pyg_dhmrec")
        logger.removeHandler(self.handler)
        logger.setLevel(self.level)
        self.handler.close()


def _with_run_log(fn: Any) -> Any:
    """Fixes the run folder of ``fn(config, resume)`` and writes its ``train.log``."""

    @functools.wraps(fn)
    def wrapper(config: dict[str, Any], resume: bool = False) -> dict[str, Any]:
        if not distributed.is_main_process():
            # rank 0 alone logs and writes train.log (its folder is the run's, broadcast in run)
            logging.getLogger("pyg_dhmrec").setLevel(logging.WARNING)
            return fn(config, resume)
        config = dict(config, output=str(default_output(config)))
        with _RunLog(Path(config["output"]) / TRAIN_LOG):
            log.info(
                "%s %s on %s in %s",
                "resuming" if resume else "training",
                config["model"],
                config["dataset"],
                config["output"],
            )
            return fn(config, resume)

    return wrapper


@_with_run_log
def run(config: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """Load data, build the model, train, evaluate and save ``results.json``.

    The run folder gets ``config.json`` first and ``checkpoint.pt`` after every epoch; with
    ``resume``, training continues from that checkpoint and ends as an uninterrupted run would.
    The folder is locked for the run and must not hold a run of another configuration.
    Under torchrun every rank runs this; rank 0 alone claims the folder and writes its files.
    """
    config = dict(config)
    ctx = distributed.setup(config["device"])
    output = default_output(config)
    if ctx:
        output = ctx.broadcast_object(output)  # rank 0's (timestamped) folder
    config["output"] = str(output)
    with distributed.on_main(ctx, claim_run_folder(output, config, resume)):
        return _run_in_folder(config, output, resume, ctx)


def _run_in_folder(
    config: dict[str, Any], output: Path, resume: bool, ctx: distributed.Dist | None = None
) -> dict[str, Any]:
    device = ctx.device if ctx else resolve_device(config["device"])
    seed_everything(config["seed"], device)  # the same seed on every rank: common streams
    with distributed.main_first(ctx):  # rank 0 builds the dataset and graph caches first
        dataset, data, model = load_data_and_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    name = config["model"] + (f" + plugin {config['plugin']}" if config.get("plugin") else "")
    ranks = f" x {ctx.world_size} ranks ({ctx.backend})" if ctx else ""
    log.info("model %s (%d parameters) on %s%s", name, n_params, device, ranks)
    trainer = Trainer(
        model, data, config, device, output=output, dist=ctx, data_fingerprint=dataset.fingerprint()
    )
    if resume:
        trainer.load_checkpoint(output / CHECKPOINT)
    results = trainer.fit()
    results["dataset_stats"] = dataset.stats
    results["data_fingerprint"] = trainer.data_fingerprint  # load_run compares it
    if trainer.is_main:
        path = save_results(results, output)
        log.info("results written to %s", path)
    return results


BASELINE_FOLDER = "baseline-{model}"


def check_baseline(config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The configuration of the run's baseline (None when none applies), checked before any
    training: an unknown model or a run under torchrun stops the job at once."""
    if not baseline_applies(config):
        if config.get("baseline") is not None and distributed.is_main_process():
            log.info("baseline %s is the run's model: no comparison", config["baseline"])
        return None
    if distributed.under_torchrun():
        raise ConfigError(
            f"baseline: {config['baseline']} trains in one process after the run, not under "
            "torchrun; give --baseline null (train the baseline as a torchrun job of its own, "
            "then run.py compare RUN BASELINE_RUN)"
        )
    return baseline_config(config)


def add_baseline(config: Mapping[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """Compare the finished run in ``config['output']`` with its baseline, when one applies.

    The baseline (:func:`~pyg_dhmrec.config.baseline_config`) trains into
    ``<output>/baseline-<model>/``, or is resumed or reused from there; the comparison
    (:func:`~pyg_dhmrec.experiment.baseline_comparison`) is logged and stored under
    ``"baseline"`` in the run's ``results.json``; ``results`` is returned with it.
    """
    base = check_baseline(config)
    if base is None:
        return results
    output = Path(config["output"])
    base["output"] = str(output / BASELINE_FOLDER.format(model=base["model"]))
    log.info("baseline %s in %s", base["model"], base["output"])
    run_or_resume(base, run)
    results = dict(results, baseline=baseline_comparison(output, Path(base["output"])))
    save_results(results, output)
    log.info("comparison with baseline %s written to %s", base["model"], output / RESULTS)
    return results


def run_with_baseline(config: dict[str, Any], resume: bool = False) -> dict[str, Any]:
    """:func:`run`, then :func:`add_baseline` (a baseline runs in one process: under
    torchrun it is refused before training starts)."""
    if check_baseline(config) is None:
        return run(config, resume)
    config = dict(config, output=str(default_output(config)))
    return add_baseline(config, run(config, resume))


def _summary(results: Mapping[str, Any]) -> dict[str, Any]:
    summary = {
        "model": results["model"],
        "dataset": results["dataset"],
        "best_epoch": results["best_epoch"],
        "test": {k: round(v, 4) for k, v in results["test"].items()},
    }
    if "baseline" in results:
        c = results["baseline"]
        summary["baseline"] = {
            "model": c["model"],
            "ratio": {k: None if v is None else round(v, 4) for k, v in c["ratio"].items()},
            "t": round(c["paired_t_test"]["t"], 4),
            "p": c["paired_t_test"]["p"],
        }
    return summary


def _print_run(results: Mapping[str, Any]) -> None:
    """The comparison line (when a baseline ran), then the JSON summary line."""
    if "baseline" in results:
        _print(results["baseline"]["line"])
    _print(json.dumps(_summary(results)))


def _check_grid_against_command_line(
    args: argparse.Namespace, extra: Sequence[str], axes: Mapping[str, Any]
) -> None:
    """Refuse a grid over a key the command line also sets: every point would override the
    option, which would change nothing without a word."""
    given = {w[2:].replace("-", "_"): w for w in _option_words(extra) if w.startswith("--")}
    given.update({k: f"--{k}" for k in ("device",) if getattr(args, k, None) is not None})
    both = [k for k in grid_axes(axes) if k in given]
    if both:
        options = ", ".join(given[k] for k in both)
        raise ConfigError(
            f"--grid {args.grid}: varies {', '.join(both)}, which the command line also sets "
            f"({options}); each point would override it: drop {options} or take "
            f"{', '.join(both)} out of the grid"
        )


def _build_grid_point(config: dict[str, Any]) -> None:
    """Build a grid point's dataset and model and drop them: the model's checks of its
    options run before any point trains (derived graphs are cached for the run)."""
    previous = logging.root.manager.disable
    logging.disable(logging.INFO)  # the point's own run logs the loading
    try:
        load_data_and_model(config)
    finally:
        logging.disable(previous)


def train_main(argv: Sequence[str]) -> int:
    """``run.py [--model M] [--dataset D] [--resume RUN | --grid YAML | --seeds N] ...``."""
    args, extra = build_parser().parse_known_args(argv)
    if args.resume:
        _print_run(run_with_baseline(resume_config(args, extra), resume=True))
        return 0
    config = resolve_config(args, extra)
    if args.grid and args.seeds is not None:  # --seeds 0 too: it is refused, not ignored
        raise ConfigError("--grid and --seeds cannot be combined; run --seeds on the chosen point")
    if (args.grid or args.seeds is not None) and distributed.under_torchrun():
        raise ConfigError("--grid and --seeds run in one process; start each run under torchrun")
    if args.grid:
        shipped = CONFIG_DIR / "grids" / f"{args.grid}.yaml"
        # a bare name finds the packaged grid also where configs/ is not in the current folder
        grid = shipped if not Path(args.grid).exists() and shipped.is_file() else Path(args.grid)
        axes = load_grid(grid)
        _check_grid_against_command_line(args, extra, axes)
        if config["baseline"] is not None:  # a per-point test comparison invites test selection
            log.info(
                "--grid: no baseline (%s) for the points; compare the selected point with "
                "run.py compare",
                config["baseline"],
            )
            config["baseline"] = None
        output = default_output(config, "grid")
        summary = run_grid(
            config, axes, output, run, source=args.grid, check_point=_build_grid_point
        )
        print(summary["table"])
        print(f"selected on valid recall@20: {summary['selected']}")
        test = {k: round(v, 4) for k, v in summary["selected_test"].items()}
        print(json.dumps({"selected": summary["selected"], "test": test}))
        print(f"written: {output / 'grid.md'}, {output / 'grid.json'}")
        return 0
    if args.seeds is not None:
        output = default_output(config, "seeds")
        check_baseline(config)  # a bad baseline stops the job before the first seed trains
        summary = run_seeds(config, args.seeds, output, run, then=add_baseline)
        print(f"{config['model']} on {config['dataset']}, seeds {summary['seeds']}:")
        for key, stat in summary["test"].items():
            spread = f" ± {stat['std']:.4f}" if len(summary["seeds"]) > 1 else " (one seed: no std)"
            print(f"  test {key}: {stat['mean']:.4f}{spread}")
        for comparison in summary.get("baseline", []):
            print(comparison["line"])
        print(f"written: {output / 'seeds.json'}")
        return 0
    _print_run(run_with_baseline(config))
    return 0


def _print(line: str) -> None:
    if distributed.is_main_process():  # one summary line per job, not per rank
        print(line)


def compare_main(argv: Sequence[str]) -> int:
    """``run.py compare RUN_A RUN_B``: paired t-test of per-user test Recall@20."""
    parser = _parser(
        prog=f"{PROG} compare",
        description="Paired t-test (scipy.stats.ttest_rel) of per-user test metrics of two "
        "finished runs of the same dataset.",
    )
    parser.add_argument("run_a", type=folder_path)
    parser.add_argument("run_b", type=folder_path)
    parser.add_argument("--metric", default="recall@20", help="per-user metric (recall@20)")
    args = parser.parse_args(argv)
    if args.run_a.resolve() == args.run_b.resolve():
        raise ExperimentError(f"compare needs two runs, got {args.run_a} twice")
    r = compare_runs(args.run_a, args.run_b, args.metric)
    print(f"{r['metric']} over {r['users']} test users")
    print(f"  A {args.run_a}: {r['mean_a']:.6f}")
    print(f"  B {args.run_b}: {r['mean_b']:.6f}")
    print(f"  A - B: {r['difference']:+.6f}")
    t = "nan (identical per-user values)" if math.isnan(r["t"]) else f"{r['t']:.4f}"
    print(f"  paired t = {t}, p = {r['p']:.4g}")
    # null, not NaN, where identical values leave t undefined: strict JSON readers refuse NaN
    print(
        json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()})
    )
    return 0


def plot_main(argv: Sequence[str]) -> int:
    """``run.py plot {curves,sweep,tsne} FOLDER [--out DIR]``."""
    from pyg_dhmrec import plots

    parser = _parser(
        prog=f"{PROG} plot", description="Figures of runs (needs the 'plots' extra: matplotlib)."
    )
    parser.add_argument("kind", choices=["curves", "sweep", "tsne"])
    parser.add_argument(
        "folder", type=folder_path, help="run folder (sweep: folder of point folders)"
    )
    parser.add_argument(
        "--out", type=folder_path, help="folder of the PNG (default <folder>/figures)"
    )
    parser.add_argument("--x", help="sweep: key on the x axis (default: first varying key)")
    parser.add_argument("--lines", help="sweep: one line per value of this key")
    parser.add_argument("--metric", default="recall@20", help="sweep: metric (recall@20)")
    parser.add_argument("--max-items", type=int, default=1000, help="tsne: items sampled")
    args = parser.parse_args(argv)
    if args.max_items < 2:
        parser.error(
            f"--max-items must be at least 2 (t-SNE places points by their neighbours), "
            f"got {args.max_items}"
        )
    if not args.folder.is_dir():
        raise ExperimentError(f"{args.folder}: no such folder")
    if args.out is not None and args.out.exists() and not args.out.is_dir():  # before t-SNE's work
        raise ExperimentError(f"plot --out {args.out}: exists and is not a folder; give a folder")
    out = args.out or args.folder / "figures"
    if args.kind == "curves":
        path = plots.plot_curves(args.folder, out)
    elif args.kind == "sweep":
        path = plots.plot_sweep(args.folder, out, args.x, args.lines, args.metric)
    else:
        path = plots.plot_tsne(args.folder, out, args.max_items)
    print(f"written: {path}")
    return 0


def recommend_main(argv: Sequence[str]) -> int:
    """``run.py recommend --run RUN --users U [U ...] --k K``: top-k unseen items per user."""
    parser = _parser(
        prog=f"{PROG} recommend",
        description="Top-k items per user from a finished run's best.pt (train items excluded).",
    )
    parser.add_argument("--run", type=folder_path, required=True, help="finished run folder")
    parser.add_argument(
        "--users",
        type=int,
        nargs="+",
        action="extend",  # --users 1 --users 2 asks for both, not for the last list
        required=True,
        help="user ids",
    )
    parser.add_argument("--k", type=int, default=10, help="items per user (10)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    model, data, _ = load_run(args.run, resolve_device(args.device))
    for row in recommend(model, data, args.users, args.k):
        print(json.dumps(row))
    return 0


def export_main(argv: Sequence[str]) -> int:
    """``run.py export --run RUN [--out DIR]``: the final user and item embeddings as .npy."""
    parser = _parser(
        prog=f"{PROG} export",
        description="Write user_embeddings.npy and item_embeddings.npy of a finished run.",
    )
    parser.add_argument("--run", type=folder_path, required=True, help="finished run folder")
    parser.add_argument(
        "--out", type=folder_path, help="folder of the files (default: the run folder)"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    args = parser.parse_args(argv)
    model, _, _ = load_run(args.run, resolve_device(args.device))
    for path in export_embeddings(model, args.out or args.run):
        print(f"written: {path}")
    return 0


COMMANDS = {
    "compare": compare_main,
    "plot": plot_main,
    "recommend": recommend_main,
    "export": export_main,
}
# Errors reported as "error: <message>" and exit code 2 rather than a traceback.
USER_ERRORS = (
    ConfigError,
    DataFormatError,
    FileNotFoundError,
    # a path of the wrong kind or rights (a folder where run.lock goes): the message names it
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
    FileExistsError,
    DownloadError,
    ValueError,
    FloatingPointError,
    MissingExtraError,
)


def folder_path(text: str) -> Path:
    """An argparse type: a path, not empty (``Path("")`` would be the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a path, got an empty string")
    return Path(text)


def nonempty_text(text: str) -> str:
    """An argparse type: a name or path, not empty (it would read as the option left out)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must name a file, got an empty string")
    return text


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation that failed (host or accelerator memory)."""
    if isinstance(error, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(error)
    return "can't allocate memory" in text or "Storage size calculation overflowed" in text


def out_of_memory_message(error: BaseException) -> str:
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return (
        f"out of memory ({first[:200]}): a setting asks for more memory than this machine has; "
        "check the sizes of the run (embedding_dim, hidden and feature widths, batch_size, "
        "eval_batch_size, layer counts)"
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: a command word (compare, plot, recommend, export) or training options."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else train_main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: a run's log line said how to continue it
        print("error: interrupted (Ctrl-C)", file=sys.stderr)
        return 130  # 128 + SIGINT, the shell's convention
    except (MemoryError, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        print(f"error: {out_of_memory_message(e)}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown()  # leave torchrun's process group, if joined
