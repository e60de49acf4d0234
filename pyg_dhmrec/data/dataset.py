"""PyG ``InMemoryDataset`` over an MMRec-format folder, yielding one ``HeteroData``."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor
from torch_geometric.data import HeteroData, InMemoryDataset
from torch_geometric.data.storage import NodeStorage

from pyg_dhmrec.atomic_files import DamagedFile, read_torch_checked, write_torch_checked
from pyg_dhmrec.data.download import download_file
from pyg_dhmrec.data.graph import _check_bipartite
from pyg_dhmrec.data.mmrec_format import (
    MODALITY_NAME_RE,
    MODALITY_NAME_RULE,
    DataFormatError,
    _dangling_link_note,
    read_feature_file,
    read_inter_file,
)

log = logging.getLogger(__name__)

RATES = ("user", "rates", "item")
REV_RATES = ("item", "rev_rates", "user")
# Bump when the processed layout or the checks change (3: declared item modalities; 4: ASCII
# ids, float32 range, modality names), so caches of files now refused are not used.
PROCESSED_VERSION = 4
CACHE_KIND = "processed dataset"  # header word of the cache file
MIRROR_ENV = "PYG_DHMREC_AMAZON_MIRROR"  # base URL of the raw Amazon files, when no key sets one
_CHECKS = ("size", "md5")  # what a raw Amazon file's expected values are given as
_MD5_RE = re.compile(r"[0-9a-f]{32}")
_STALE_CACHE_RE = re.compile(r"data_[0-9a-f]{16}\.(pt|json)")
# A modality's features are data['item'].<m> (a PyG node store, which also holds num_nodes and
# the declared modalities; PyG reads x as node features) and keys of models' ModuleDict /
# ParameterDict, which refuse a key that is already an attribute (training, keys, to, ...).
RESERVED_MODALITY_NAMES = frozenset(
    {"num_nodes", "modalities", "x"}
    | {n for n in dir(NodeStorage) if not n.startswith("_")}
    | {n for n in dir(torch.nn.ModuleDict()) if not n.startswith("_")}
    | {n for n in dir(torch.nn.ParameterDict()) if not n.startswith("_")}
)


class MMRecDataset(InMemoryDataset):
    r"""An MMRec-format dataset folder ``<root>/<name>/`` as one :class:`HeteroData`.

    The graph holds node types ``user`` and ``item`` (``num_nodes`` each); train interactions as
    ``('user', 'rates', 'item').edge_index`` and its reverse ``('item', 'rev_rates', 'user')``;
    the valid and test interactions beside them as ``valid_edge_index`` / ``test_edge_index`` on
    the ``rates`` store (never message-passing edges); one float32 matrix per modality on the
    item store, ``data['item'][modality]``, for the modalities whose files are present.

    Args:
        root: folder holding the dataset folders (``--data-root``).
        name: dataset name; the folder ``<root>/<name>`` holds ``inter_file``.
        modalities: modality name -> feature file name inside the dataset folder. Missing files
            are allowed (ID-only models need none); :meth:`require_modalities` checks them.
        inter_file: interaction file name (default ``<name>.inter``).
        url: archive fetched by :meth:`download` when the interaction file is missing.
        cache_dir: where processed data is cached. Default ``<root>/<name>/processed``, or, if
            that folder cannot be written, ``~/.cache/pyg_dhmrec/<name>-<hash of the path>``.
        transform: PyG transform applied on access.
        force_reload: rebuild the processed file even if a valid one exists.

    The processed file name carries a fingerprint of the raw files' contents and of the
    modality list, so changed raw files are re-processed automatically. The cache is one
    checksummed file written atomically; a damaged one is rebuilt with a warning.
    """

    def __init__(
        self,
        root: str,
        name: str,
        modalities: Mapping[str, str] | None = None,
        inter_file: str | None = None,
        url: str | None = None,
        cache_dir: str | None = None,
        transform: Callable | None = None,
        force_reload: bool = False,
    ) -> None:
        root, name = _check_root_and_name(root, name)
        self.name = name
        self.modality_files: dict[str, str] = check_modality_files(
            name, os.path.join(root, name), modalities
        )
        self.inter_file = inter_file or f"{name}.inter"
        self.url = url
        self._cache_dir = cache_dir
        self._digests: dict[tuple, str] = {}
        super().__init__(root, transform, force_reload=force_reload, log=False)  # calls _process
        cached, self._cached = self._cached, None
        self.data = HeteroData.from_dict(cached["data"])
        self.slices = cached["slices"]
        self.stats: dict[str, Any] = cached["stats"]
        if not self._processed_now:  # the reader's warnings came only when the cache was built
            self._log_cached_filtering()

    # ----- folders -----
    @property
    def raw_dir(self) -> str:
        return os.path.join(self.root, self.name)

    @property
    def processed_dir(self) -> str:
        if self._cache_dir:
            return os.path.join(self._cache_dir, self.name)
        default = os.path.join(self.raw_dir, "processed")
        if _writable(default):
            return default
        return self._user_cache_dir

    @property
    def _user_cache_dir(self) -> str:
        digest = hashlib.sha1(os.path.abspath(self.raw_dir).encode()).hexdigest()[:10]
        return os.path.join(Path.home(), ".cache", "pyg_dhmrec", f"{self.name}-{digest}")

    @property
    def raw_file_names(self) -> list[str]:
        return [self.inter_file]

    @property
    def processed_file_names(self) -> list[str]:
        return [f"data_{self.fingerprint()}.pt"]

    @property
    def modalities(self) -> list[str]:
        """Modalities whose features are loaded, in config order."""
        return self.modalities_present(self._data)

    def fingerprint(self) -> str:
        """Hash of the raw files' names and contents and of the settings (modality list).

        Content, not size and modification time: an edit that keeps both (``cp -p``,
        ``rsync -a``) still gives a new fingerprint. Each file is hashed once per process
        (again only when its size, times or inode change).
        """
        parts = [f"v{PROCESSED_VERSION}", self.inter_file]
        for modality, file in [("inter", self.inter_file), *sorted(self.modality_files.items())]:
            path = Path(self.raw_dir) / file
            parts.append(f"{modality}={file}:{self._content_digest(path)}")
        return hashlib.sha1("|".join(parts).encode()).hexdigest()[:16]

    def _content_digest(self, path: Path) -> str:
        try:
            st = path.stat()
        except FileNotFoundError:
            return "-"
        if not path.is_file():  # a folder in place of a data file (an archive unpacked there)
            raise DataFormatError(
                f"{path.resolve()} is not a regular file (a folder?); expected the "
                + ("interaction file" if path.name == self.inter_file else "feature matrix")
                + f" of dataset '{self.name}' (MMRec format, see README)"
            )
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
        if key not in self._digests:
            digest = hashlib.sha256()
            try:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        digest.update(block)
            except PermissionError as e:  # read here first, before the file's own reader
                raise DataFormatError(
                    f"{path}: cannot read the "
                    + ("interaction file" if path.name == self.inter_file else "feature matrix")
                    + f" of dataset '{self.name}' ({e.strerror}); make it readable"
                ) from None
            self._digests[key] = digest.hexdigest()
        return self._digests[key]

    # ----- download / process -----
    def download(self) -> None:
        target = Path(self.raw_dir)
        files = ", ".join([self.inter_file, *self.modality_files.values()])
        place = f"place {files} in {target.resolve()}/ (MMRec format, see README)"
        if not self.url:
            raise FileNotFoundError(
                f"dataset '{self.name}': {target / self.inter_file} not found"
                + _dangling_link_note(target / self.inter_file)
                + " and no url is "
                f"configured (configs/datasets/{self.name}.yaml); {place}"
            )
        log.info("downloading %s", self.url)
        try:
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / os.path.basename(self.url.split("?")[0])
                # The shared downloader: resumes a cut transfer and refetches a short one.
                download_file(self.url, archive, progress=False)
                _extract(archive, target)
        except OSError as e:  # DownloadError is an OSError naming the URL
            raise FileNotFoundError(
                f"dataset '{self.name}': download of {self.url} failed ({e}); {place}"
            ) from None
        if not (target / self.inter_file).exists():
            raise FileNotFoundError(
                f"dataset '{self.name}': the archive {self.url} has no {self.inter_file}; {place}"
            )

    def process(self) -> None:
        raw = Path(self.raw_dir)
        log.info("processing dataset '%s' (%s) into %s", self.name, raw, self.processed_dir)
        inter = read_inter_file(raw / self.inter_file)
        data = HeteroData()
        data["user"].num_nodes = inter.num_users
        data["item"].num_nodes = inter.num_items
        train = torch.from_numpy(inter.edges("train"))
        data[RATES].edge_index = train
        data[RATES].valid_edge_index = torch.from_numpy(inter.edges("valid"))
        data[RATES].test_edge_index = torch.from_numpy(inter.edges("test"))
        data[REV_RATES].edge_index = train.flip(0)
        present = []
        for modality, file in self.modality_files.items():
            if (raw / file).exists():
                features = read_feature_file(raw / file, inter.num_items, modality)
                data["item"][modality] = torch.from_numpy(features)
                present.append(modality)
            elif (raw / file).is_symlink():  # listed in the folder, yet not loaded: say why
                log.warning(
                    "%s%s: modality '%s' left out (models that need it stop)",
                    raw / file,
                    _dangling_link_note(raw / file),
                    modality,
                )
        data["item"].modalities = present  # declared: transforms may add other tensors here

        stats = {
            "users": inter.num_users,
            "items": inter.num_items,
            "train": int(train.size(1)),
            "valid": int(data[RATES].valid_edge_index.size(1)),
            "test": int(data[RATES].test_edge_index.size(1)),
            "duplicates_removed": inter.num_duplicates,
            "cold_start_interactions_dropped": inter.num_dropped_cold_start,
            "cold_start_users": inter.num_cold_start_users,
            "modalities": {m: list(data["item"][m].shape) for m in self.modalities_present(data)},
        }
        collated, slices = self.collate([data])
        # One file holds graph and stats, so no kill can leave one without the other.
        cache = {"data": collated.to_dict(), "slices": slices, "stats": stats}
        write_torch_checked(self.processed_paths[0], cache, CACHE_KIND)
        for stale in Path(self.processed_dir).iterdir():
            if _STALE_CACHE_RE.fullmatch(stale.name) and str(stale) != self.processed_paths[0]:
                stale.unlink(missing_ok=True)  # this class's cache of older raw files

    def _log_cached_filtering(self) -> None:
        """Repeat, for a dataset read from its cache, what reading the raw files dropped."""
        s, inter = self.stats, Path(self.raw_dir) / self.inter_file
        if s.get("cold_start_interactions_dropped"):
            log.warning(
                "%s: dropped %d valid/test interaction(s) of %d user(s) without train "
                "interactions (MMRec filter_out_cod_start_users; counted when the processed "
                "cache was built)",
                inter,
                s["cold_start_interactions_dropped"],
                s.get("cold_start_users", 0),
            )
        if s.get("duplicates_removed"):
            log.warning(
                "%s: %d duplicate (userID, itemID) row(s) kept once (the first; the lines were "
                "named when the processed cache was built)",
                inter,
                s["duplicates_removed"],
            )

    def _process(self) -> None:
        # Replaces PyG's: the cache is one checksummed file, verified here and rebuilt (with
        # one warning) when damaged; PyG's pre_transform.pt/pre_filter.pt are not written.
        path = self.processed_paths[0]
        self._cached = None
        self._processed_now = False
        if not self.force_reload and os.path.exists(path):
            try:
                self._cached = self._read_cache(path)
                return
            except DamagedFile as e:
                log.warning("%s; rebuilding the processed dataset cache", e)
        self._processed_now = True
        try:
            os.makedirs(self.processed_dir, exist_ok=True)
            self.process()
        except (PermissionError, NotADirectoryError, FileExistsError) as e:
            if self._cache_dir:  # the folder asked for: no fallback was involved
                raise DataFormatError(
                    f"dataset '{self.name}': cannot write the processed cache in "
                    f"{self.processed_dir} ({e.strerror}): --cache_dir {self._cache_dir} must be "
                    "a writable folder (or a path where one can be made)"
                ) from None
            raise DataFormatError(
                f"dataset '{self.name}': cannot write the processed cache in "
                f"{self.processed_dir} ({e.strerror}); the dataset folder {self.raw_dir} and the "
                f"user cache {os.path.dirname(self._user_cache_dir)} are read-only here: set "
                "--cache_dir to a writable folder"
            ) from None
        self._cached = self._read_cache(path)

    @staticmethod
    def _read_cache(path: str) -> dict[str, Any]:
        cache = read_torch_checked(path, CACHE_KIND)
        if not isinstance(cache, dict) or not {"data", "slices", "stats"} <= set(cache):
            raise DamagedFile(f"{path}: not a processed dataset (keys data, slices, stats)")
        return cache

    def modalities_present(self, data: HeteroData) -> list[str]:
        return list(modality_names(data))

    def require_modalities(self) -> None:
        """Raise naming the missing feature files when a model needs the modality features."""
        if not self.modality_files:
            raise DataFormatError(
                f"dataset '{self.name}' has no modalities: this model needs features; put "
                f"<modality>_feat.npy files (one row per item) in {Path(self.raw_dir).resolve()}, "
                "or name them with --modalities '{image: img.npy, text: txt.npy}' (or key "
                f"'modalities' of configs/datasets/{self.name}.yaml)"
            )
        raw, present = Path(self.raw_dir), self.modalities
        missing = [raw / f for m, f in self.modality_files.items() if m not in present]
        if missing:
            raise DataFormatError(
                f"dataset '{self.name}': this model needs every modality's features; missing "
                + ", ".join(f"{path}{_dangling_link_note(path)}" for path in missing)
            )

    def __repr__(self) -> str:
        s = self.stats
        return (
            f"{self.__class__.__name__}({self.name}: {s['users']} users, {s['items']} items, "
            f"train/valid/test {s['train']}/{s['valid']}/{s['test']}, "
            f"modalities {s['modalities']})"
        )


class SyntheticDataset(MMRecDataset):
    """The built-in generated dataset: written in MMRec format on first use, then read back.

    ``synthetic`` holds :class:`~pyg_dhmrec.data.synthetic.SyntheticConfig` fields; the folder is
    regenerated when they change (the generator records them in ``meta.json``).
    """

    def __init__(self, root: str, name: str, synthetic: Mapping[str, Any], **kwargs: Any) -> None:
        from pyg_dhmrec.config import did_you_mean
        from pyg_dhmrec.data.synthetic import SyntheticConfig, ensure_synthetic

        root, name = _check_root_and_name(root, name)
        fields = [f.name for f in dataclasses.fields(SyntheticConfig)]
        unknown = [key for key in synthetic if key not in fields]
        if unknown:
            hint = did_you_mean(str(unknown[0]), fields)
            raise DataFormatError(
                f"dataset '{name}': bad 'synthetic' settings: unknown setting "
                f"{unknown[0]!r} (known: {', '.join(fields)}).{hint}"
            )
        try:
            config = SyntheticConfig(**dict(synthetic))
        except (TypeError, ValueError) as e:
            raise DataFormatError(f"dataset '{name}': bad 'synthetic' settings: {e}") from None
        # Before generating: a refused name would otherwise leave its files written.
        reserved = sorted(set(config.modalities) & RESERVED_MODALITY_NAMES)
        if reserved:
            raise DataFormatError(
                f"dataset '{name}': bad 'synthetic' settings: modality name(s) "
                f"{', '.join(reserved)} are reserved: attributes of the item store data['item'] "
                "or of the torch.nn.ModuleDict that models key by modality; choose other names"
            )
        generated = {m: f"{m}_feat.npy" for m in config.modalities}
        if not kwargs.get("modalities"):  # load_dataset passes {} when the config sets none
            kwargs["modalities"] = generated
        foreign = {m: f for m, f in kwargs["modalities"].items() if generated.get(m) != f}
        if foreign:  # else a file of an earlier generation, or none, would be read
            raise DataFormatError(
                f"dataset '{name}': modalities {foreign} are not files the synthetic generator "
                f"writes with these settings ({generated}); leave 'modalities' out (the "
                "generated ones are used) or name some of these"
            )
        check_modality_files(name, os.path.join(root, name), kwargs["modalities"])
        try:
            ensure_synthetic(Path(root) / name, name, config, log=log.info)
        except FileExistsError as e:
            raise DataFormatError(f"dataset '{name}': {e}") from None
        super().__init__(root, name, **kwargs)


class AmazonDataset(MMRecDataset):
    """An Amazon (2014 release) dataset built from its raw files when the folder lacks it.

    ``amazon`` is the dataset YAML's ``amazon`` mapping: ``category``, ``reviews_url``,
    ``meta_url``, ``image_url`` and optionally ``k_core`` (5), ``text_encoder`` (``auto``),
    ``seed`` (2024, of the train/valid/test split), ``mirror`` (a base URL serving the three
    files by name; else the ``PYG_DHMREC_AMAZON_MIRROR`` environment variable) and
    ``<file>_size`` / ``<file>_md5`` (``file`` one of reviews, meta, image): what each raw file
    must be. A folder holding ``<name>.inter`` that this class did not build (e.g. MMRec's
    preprocessed files) is used as is, with or without ``raw/``; a folder this class built is
    rebuilt when its ``meta.json`` is missing (interrupted build) or records other settings.
    """

    REQUIRED = ("category", "reviews_url", "meta_url", "image_url")
    OPTIONAL = {
        "k_core": 5,
        "text_encoder": "auto",
        "seed": 2024,
        "mirror": None,
        **{
            f"{key}_{check}": None
            for key in ("reviews", "meta", "image")
            for check in ("size", "md5")
        },
    }

    def __init__(
        self,
        root: str,
        name: str,
        amazon: Mapping[str, Any],
        progress: bool = True,
        **kwargs: Any,
    ) -> None:
        from pyg_dhmrec.data.amazon import (
            RAW_KEYS,
            amazon_folder_state,
            build_amazon_dataset,
            settings_of,
        )

        # download bars only for a person at a terminal, never with --quiet or into a log file
        self.progress = progress and sys.stderr.isatty()
        where = f"configs/datasets/{name}.yaml, key 'amazon'"
        if not isinstance(amazon, Mapping):
            raise DataFormatError(f"dataset '{name}': {where} must be a mapping")
        unknown = set(amazon) - set(self.REQUIRED) - set(self.OPTIONAL)
        missing = [key for key in self.REQUIRED if not amazon.get(key)]
        if unknown or missing:
            raise DataFormatError(
                f"dataset '{name}': {where}: "
                + (f"unknown key(s) {', '.join(sorted(unknown))}; " if unknown else "")
                + (f"missing {', '.join(missing)}; " if missing else "")
                + f"expected {', '.join(self.REQUIRED)} and optionally {', '.join(self.OPTIONAL)}"
            )
        a = self.amazon = {**self.OPTIONAL, **dict(amazon)}
        for key in RAW_KEYS:
            size, md5 = a[f"{key}_size"], a[f"{key}_md5"]
            if size is not None and (
                isinstance(size, bool) or not isinstance(size, int) or size < 1
            ):
                raise DataFormatError(
                    f"dataset '{name}': {where}: '{key}_size' must be a positive number of bytes, "
                    f"got {size!r}"
                )
            if md5 is not None and not (isinstance(md5, str) and _MD5_RE.fullmatch(md5)):
                raise DataFormatError(
                    f"dataset '{name}': {where}: '{key}_md5' must be 32 hex digits, got {md5!r}"
                )
        self.urls = {key: a[f"{key}_url"] for key in RAW_KEYS}
        self.settings = settings_of(
            a["category"], self.urls, a["seed"], a["k_core"], a["text_encoder"]
        )
        if not kwargs.get("modalities"):  # the built folder always holds both modalities
            kwargs["modalities"] = {"image": "image_feat.npy", "text": "text_feat.npy"}
        folder = Path(root) / name
        reason = amazon_folder_state(folder, name, self.settings)
        if reason is not None:
            log.info(
                "building dataset '%s' from the raw Amazon files of %s (%s)",
                name,
                a["category"],
                reason,
            )
            build_amazon_dataset(
                folder,
                name,
                a["category"],
                self.urls,
                seed=a["seed"],
                k=a["k_core"],
                text_encoder=a["text_encoder"],
                log=log.info,
                progress=self.progress,
                expected={
                    key: {"size": a[f"{key}_size"], "md5": a[f"{key}_md5"]} for key in RAW_KEYS
                },
                mirror=a["mirror"] or os.environ.get(MIRROR_ENV) or None,
            )
        super().__init__(root, name, **kwargs)


def _check_root_and_name(root: Any, name: Any) -> tuple[str, str]:
    """``(root, name)`` as strings, refused with a message naming the argument otherwise."""
    if not isinstance(name, str) or not name:
        raise TypeError(
            f"MMRecDataset: argument 'name' must be a non-empty str (the dataset folder's name "
            f"under root), got {type(name).__name__} {name!r}"
        )
    if not isinstance(root, (str, os.PathLike)) or not isinstance(os.fspath(root), str):
        raise TypeError(
            f"dataset '{name}': argument 'root' must be a str or os.PathLike (the folder that "
            f"holds the dataset folder {name}/), got {type(root).__name__} {root!r}"
        )
    return os.fspath(root), name


def check_modality_files(name: str, folder: str, modalities: Any) -> dict[str, str]:
    """The ``modalities`` argument (modality name -> feature file name) as a ``dict[str, str]``,
    each name checked against :data:`MODALITY_NAME_RE` and :data:`RESERVED_MODALITY_NAMES`.
    Errors name the dataset, the entry and its file in ``folder``."""
    if modalities is None:
        return {}
    if not isinstance(modalities, Mapping):
        raise TypeError(
            f"dataset '{name}': argument 'modalities' must be a mapping of modality name -> "
            f"feature file name, e.g. {{'image': 'image_feat.npy'}}, got "
            f"{type(modalities).__name__} {modalities!r}"
        )
    checked = {}
    for modality, file in modalities.items():
        if not isinstance(file, (str, os.PathLike)) or not isinstance(os.fspath(file), str):
            raise TypeError(
                f"dataset '{name}': modalities entry {modality!r}: the feature file name must "
                f"be a str or os.PathLike, got {type(file).__name__} {file!r}"
            )
        file = os.fspath(file)
        where = (
            f"dataset '{name}': modality {modality!r} (feature file {os.path.join(folder, file)})"
        )
        if not file:
            raise DataFormatError(f"{where}: empty feature file name")
        hint = (
            f"; rename the file (image_feat.npy is modality image) or map a valid name to it: "
            f"--modalities '{{image: {os.path.basename(file)}}}' (or key 'modalities' of the "
            "dataset's YAML)"
        )
        if not isinstance(modality, str) or not MODALITY_NAME_RE.fullmatch(modality):
            raise DataFormatError(
                f"{where}: invalid name; a modality name must be {MODALITY_NAME_RULE}: it "
                "becomes an attribute and module name" + hint
            )
        if modality in RESERVED_MODALITY_NAMES:
            raise DataFormatError(
                f"{where}: the name is reserved: it is an attribute of the item store "
                "data['item'] or of the torch.nn.ModuleDict that models key by modality" + hint
            )
        checked[modality] = file
    return checked


def modality_names(data: HeteroData) -> list[str]:
    """The item modalities declared in ``data['item'].modalities`` (dataset-config order).

    The list is declared, not inferred from the tensors on the item store, because transforms
    may add other item tensors. A graph built by hand declares it too, e.g.
    ``data['item'].modalities = ['image', 'text']`` (``[]`` for an ID-only graph).
    """
    store = data["item"]
    if "modalities" not in store:
        raise ValueError(
            "data['item'].modalities is not set: declare the item feature matrices that are "
            "modalities, e.g. data['item'].modalities = ['image', 'text'] ([] for none)"
        )
    names = list(store.modalities)
    repeated = sorted({str(m) for m in names if names.count(m) > 1})
    if repeated:  # the feature tables are keyed by name: a repeat would collapse into one
        raise ValueError(
            f"data['item'].modalities must name each modality once, got {names} "
            f"({', '.join(repeated)} repeated)"
        )
    missing = [m for m in names if not isinstance(store.get(m), Tensor)]
    if missing:
        raise ValueError(
            f"data['item'].modalities declares {names}, but the item store has no feature "
            f"matrix {missing}"
        )
    return names


def item_features(data: HeteroData) -> dict[str, Tensor]:
    """The declared modality feature matrices on the item store (:func:`modality_names`)."""
    return {m: data["item"][m] for m in modality_names(data)}


#: The attribute of ``data[RATES]`` that holds each split's ``[2, E]`` (user, item) ids.
SPLIT_EDGES = {"train": "edge_index", "valid": "valid_edge_index", "test": "test_edge_index"}


def check_interaction_graph(
    data: HeteroData, splits: Sequence[str] = ("train", "valid", "test"), features: bool = True
) -> None:
    """Checks a graph, e.g. one built by hand, before a model or trainer reads it: the user and
    item counts set; each split's edges (:data:`SPLIT_EDGES`) present as ``[2, E]`` integer
    ids within them, with at least one train interaction; with ``features``, every declared
    modality (:func:`modality_names`, when declared) a finite ``[items, f]`` matrix. Errors
    name the attribute, and the first bad item row."""
    if not isinstance(data, HeteroData):
        raise TypeError(
            f"expected a torch_geometric.data.HeteroData (the layout of MMRecDataset), got "
            f"{type(data).__name__}"
        )
    counts = {}
    for kind in ("user", "item"):
        n = data[kind].num_nodes if kind in data.node_types else None
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(
                f"data['{kind}'].num_nodes must be the number of {kind}s, an int >= 1, got {n!r}"
            )
        counts[kind] = n
    where = "data['user', 'rates', 'item']"
    store = data[RATES] if RATES in data.edge_types else {}
    for split in splits:
        attr = SPLIT_EDGES[split]
        if attr not in store:
            raise ValueError(
                f"{where}.{attr} is missing: the {split} interactions as a [2, E] tensor of "
                "(user, item) ids (MMRecDataset writes all three splits)"
            )
        try:
            _check_bipartite(store[attr], counts["user"], counts["item"])
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}.{attr}: {e}") from None
    if "train" in splits and store["edge_index"].size(1) == 0:
        raise ValueError(f"{where}.edge_index holds no train interaction")
    _check_each_interaction_once(store, splits, counts["item"], where)
    if not features or "modalities" not in data["item"]:  # ID-only graphs need not declare them
        return
    for m, x in item_features(data).items():
        if not isinstance(x, Tensor) or x.layout != torch.strided:
            layout = x.layout if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"data['item'].{m}: expected a dense tensor, got {layout}")
        if x.dim() != 2 or x.size(0) != counts["item"] or x.size(1) == 0:
            raise ValueError(
                f"data['item'].{m}: features of shape {list(x.shape)}, expected "
                f"[{counts['item']}, f]: one row per item, f >= 1"
            )
        if not x.is_floating_point():  # as the feature files: integer codes are not features
            raise ValueError(
                f"data['item'].{m}: expected floating-point features, got dtype {x.dtype} "
                "(.float() converts numbers)"
            )
        # row blocks of about 4M entries: no full-size mask beside large (4096-d) features
        rows = max(1, (1 << 22) // max(1, x.size(1)))
        finite = torch.cat([torch.isfinite(b).all(dim=1) for b in x.split(rows)])
        if not bool(finite.all()):
            bad = (~finite).nonzero().flatten()
            raise ValueError(
                f"data['item'].{m}: features contain NaN or inf in {bad.numel()} of "
                f"{x.size(0)} item rows, first at item {int(bad[0])}"
            )


def _check_each_interaction_once(
    store: Any, splits: Sequence[str], num_items: int, where: str
) -> None:
    """Refuse a (user, item) pair given twice in a split (it would count twice in the graph's
    degrees); warn of one in two splits (a train pair is masked in ranking, so as a valid or
    test target it can never be hit)."""
    seen: dict[str, Tensor] = {}
    for split in splits:
        attr = SPLIT_EDGES[split]
        edges = store[attr].long()
        keys, count = torch.unique(edges[0] * num_items + edges[1], return_counts=True)
        if bool((count > 1).any()):
            first = int(keys[count > 1][0])
            raise ValueError(
                f"{where}.{attr}: {int((count > 1).sum())} (user, item) pair(s) given more "
                f"than once, first ({first // num_items}, {first % num_items}); give each "
                "interaction once"
            )
        for other, other_keys in seen.items():
            shared = keys[torch.isin(keys, other_keys)]
            if shared.numel():
                first = int(shared[0])
                log.warning(
                    "%s: %d (user, item) pair(s) in both the %s and the %s split, first (%d, %d); "
                    "an interaction usually belongs to one split",
                    where,
                    shared.numel(),
                    other,
                    split,
                    first // num_items,
                    first % num_items,
                )
        seen[split] = keys


def load_dataset(config: Mapping[str, Any]) -> MMRecDataset:
    """Build the dataset named by ``config['dataset']`` from the merged configuration."""
    kwargs = dict(
        modalities=config.get("modalities") or {},
        inter_file=config.get("inter_file"),
        url=config.get("url"),
        cache_dir=config.get("cache_dir"),
    )
    root, name = str(config["data_root"]), config["dataset"]
    if config.get("synthetic") and config.get("amazon"):  # else one would be ignored silently
        raise DataFormatError(
            f"dataset '{name}': keys 'synthetic' (generate the data) and 'amazon' (build it "
            "from raw Amazon files) are both set; set one of them, the other to null"
        )
    if config.get("synthetic"):
        return SyntheticDataset(root, name, config["synthetic"], **kwargs)
    if config.get("amazon"):  # built from the raw Amazon files when missing
        progress = bool(config.get("progress", True))  # download bars follow --quiet
        return AmazonDataset(root, name, config["amazon"], progress=progress, **kwargs)
    return MMRecDataset(root, name, **kwargs)


def _writable(folder: str) -> bool:
    probe = Path(folder)
    while not probe.exists():
        probe = probe.parent
    return os.access(probe, os.W_OK)


def _extract(archive: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            members = z.namelist()
            z.extractall(target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as t:
            members = t.getnames()
            t.extractall(target, filter="data")
    else:
        raise OSError(f"{archive.name} is neither a zip nor a tar archive")
    # Archives usually wrap the files in a <name>/ folder: flatten one level.
    tops = {m.split("/")[0] for m in members if m}
    if len(tops) == 1:
        inner = target / tops.pop()
        if inner.is_dir():
            for child in inner.iterdir():
                shutil.move(str(child), target / child.name)
            inner.rmdir()
