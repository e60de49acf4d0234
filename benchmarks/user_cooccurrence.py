"""Build time and extra peak memory of DualGNN's user co-occurrence graph
(:class:`~pyg_dhmrec.data.transforms.AddUserCooccurrenceGraph`) on a real dataset's train edges.

``OMP_NUM_THREADS=2 python benchmarks/user_cooccurrence.py --inter
../shared/data/sports/sports.inter``
(issue 18's target for Sports' 35,598 users: under 30 s and under 1 GB extra on 2 CPU cores).
CPU s is the process's CPU time (on a shared machine the wall time also counts waiting for a
core). Extra memory is the peak resident set size during the build, sampled every 2 ms, minus the
resident size just before it.
"""

from __future__ import annotations

import argparse
import gc
import sys
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from pyg_dhmrec.data.cooccurrence import cooccurrence_edges  # noqa: E402
from pyg_dhmrec.data.mmrec_format import read_inter_file  # noqa: E402


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples the resident set size in a thread while the ``with`` block runs."""

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--inter", required=True, help="an MMRec .inter file")
    parser.add_argument("--k", type=int, default=40, help="neighbours per user (DualGNN: 40)")
    parser.add_argument("--chunk-size", type=int, nargs="+", default=[512, 1024, 4096])
    args = parser.parse_args()
    inter = read_inter_file(Path(args.inter))
    edges = torch.from_numpy(inter.edges("train"))
    print(
        f"{args.inter}: {inter.num_users} users, {inter.num_items} items, "
        f"{edges.size(1)} train edges; {torch.get_num_threads()} threads"
    )
    print("| chunk_size | build s (wall) | CPU s | extra peak MB | edges |")
    print("|---|---|---|---|---|")
    for chunk_size in args.chunk_size:
        gc.collect()
        with PeakRSS() as rss:
            t0, cpu0 = time.perf_counter(), time.process_time()
            index, _ = cooccurrence_edges(
                edges, inter.num_users, inter.num_items, args.k, chunk_size
            )
            seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        extra = (rss.peak - rss.base) / 2**20
        print(f"| {chunk_size} | {seconds:.2f} | {cpu:.2f} | {extra:.0f} | {index.size(1)} |")
        del index


if __name__ == "__main__":
    main()
