"""Benchmark: the vectorised alpha/beta grid search vs a loop over the grid written the way the
authors' code does it (one softmax/argmax pass per grid point), side by side in one process.

    .venv/bin/python bench/mixing_grid.py [--n 10000] [--classes 10 1000] [--repeats 5]

Prints the median time of each and their ratio; both must pick the same (alpha, beta).
"""

from __future__ import annotations

import argparse
import statistics
import time
from functools import partial

import torch

from dho.mixing import DEFAULT_ALPHAS, DEFAULT_BETAS, search_mixing


def loop_search(ce: torch.Tensor, kd: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    best = (1.0, 1.0, 0.0)
    p_ce = ce.softmax(-1)
    for beta in DEFAULT_BETAS:
        p_kd = (kd / beta).softmax(-1)
        for alpha in sorted(DEFAULT_ALPHAS, reverse=True):
            acc = ((alpha * p_ce + (1 - alpha) * p_kd).argmax(-1) == y).double().mean().item()
            if acc > best[2]:
                best = (alpha, beta, acc)
    return best


def median_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100, 1000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, grid {len(DEFAULT_ALPHAS)}x{len(DEFAULT_BETAS)}")
    for c in args.classes:
        gen = torch.Generator().manual_seed(0)
        y = torch.randint(0, c, (args.n,), generator=gen)
        ce = torch.randn(args.n, c, generator=gen) + 2 * torch.nn.functional.one_hot(y, c)
        kd = torch.randn(args.n, c, generator=gen) + 2 * torch.nn.functional.one_hot(y, c)
        t_vec, best = median_time(partial(search_mixing, ce, kd, y), args.repeats)
        t_loop, ref = median_time(partial(loop_search, ce, kd, y), args.repeats)
        same = (best.alpha, best.beta) == ref[:2]
        print(f"N={args.n} C={c}: vectorised {t_vec * 1000:8.1f} ms, loop {t_loop * 1000:8.1f} ms, "
              f"ratio {t_loop / t_vec:5.2f}x, same choice: {same} (alpha={best.alpha}, beta={best.beta})")


if __name__ == "__main__":
    main()
