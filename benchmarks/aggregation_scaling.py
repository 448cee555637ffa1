"""Coordinator-side cost of validating and summing N encrypted contributions.

Run: ``.venv/bin/python benchmarks/aggregation_scaling.py [--quick]``.

For each vector size (34,560 = SmolLM2-135M context vector; 262,144 = a 7-8B model's) and
each N, N contributions (framed-ready lists of seeded CKKS ciphertexts) are prepared before
timing: ``--distinct`` different vectors are encrypted once and their bytes copied into N
independent ``bytes`` objects (the coordinator cannot tell copies apart, and independent copies
make the memory figures realistic). Then, under a PUBLIC context (no secret key), exactly what
the coordinator does for a round, in two ways:

* **streaming** (what ``Aggregator`` does): at each upload ``ckks.load_ciphertexts`` (the
  validation, keeping the loaded ciphertexts) and ``EncryptedSum.add`` into the round's
  running sum; at close, ``EncryptedSum.serialize``;
* **rebuild** (what it does for a round that was open across a restart, and what it did for
  every round before 2026-11-28): ``ckks.validate_ciphertexts`` at each upload, then
  ``ckks.sum_ciphertexts`` over all N at close (it loads and re-validates them all).

Printed per (size, N): times, per-contribution and per-ciphertext cost, input bytes, RSS
before and peak RSS during each way (VmHWM reset through /proc/self/clear_refs), and a
least-squares fit time = a + b*N with its R^2 per size (linearity check). Both ways' sums are
compared byte for byte at every N, and the decrypted sum at the largest N against the
plaintext sum. Not included: the coordinator's disk reads/digest checks of stored blobs and
gRPC transfer (see load_test.py).
"""

from __future__ import annotations

import argparse
import gc
import math
import time

import numpy as np

from _common import (
    fmt_s,
    median,
    mib,
    print_footer,
    print_header,
    print_table,
    reset_peak_rss,
    rss_kib,
)
from privacy import ckks


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``; returns ``(a, b, R^2)``."""
    x, y = np.asarray(xs, float), np.asarray(ys, float)
    if len(x) < 2:
        return float(y[0]) if len(y) else float("nan"), float("nan"), float("nan")
    b, a = np.polyfit(x, y, 1)
    residual = float(((y - (a + b * x)) ** 2).sum())
    total = float(((y - y.mean()) ** 2).sum())
    return float(a), float(b), (1.0 - residual / total) if total > 0 else float("nan")


def run_size(size: int, ns: list[int], *, distinct: int, repeats: int, secret, public):  # type: ignore[no-untyped-def]
    """Measure every N for one vector size; returns table rows and the fit inputs."""
    rng = np.random.default_rng(size)
    k = min(distinct, max(ns))
    vectors = [rng.normal(size=size) for _ in range(k)]
    start = time.perf_counter()
    encrypted = [ckks.encrypt_vector(secret, v) for v in vectors]
    encrypt_s = (time.perf_counter() - start) / k
    cts = len(encrypted[0])
    contribution_bytes = sum(len(b) for b in encrypted[0])
    rows, fit_n, fit_t = [], [], []
    for n in ns:
        # Independent bytes objects (as if read from n uploads), built before timing.
        contributions = [[bytes(bytearray(b)) for b in encrypted[i % k]] for i in range(n)]
        totals: dict[str, list[bytes]] = {}
        for way in ("streaming", "rebuild"):
            upload_times, close_times = [], []
            peak_delta = 0
            before = rss_kib()["VmRSS"]
            for _ in range(repeats):
                totals.pop(way, None)
                gc.collect()
                base = rss_kib()["VmRSS"]
                reset_peak_rss()
                t0 = time.perf_counter()
                if way == "streaming":
                    running = ckks.EncryptedSum(public, vector_length=size)
                    for blobs in contributions:
                        running.add(ckks.load_ciphertexts(public, blobs, expected_length=size))
                    t1 = time.perf_counter()
                    totals[way] = running.serialize()
                    del running
                else:
                    for blobs in contributions:
                        ckks.validate_ciphertexts(public, blobs, expected_length=size)
                    t1 = time.perf_counter()
                    totals[way] = ckks.sum_ciphertexts(public, contributions)
                t2 = time.perf_counter()
                peak_delta = max(peak_delta, rss_kib()["VmHWM"] - base)
                upload_times.append(t1 - t0)
                close_times.append(t2 - t1)
            u, c = median(upload_times), median(close_times)
            if way == "streaming":
                fit_n.append(n)
                fit_t.append(u + c)
            rows.append([
                f"{size:,}", n, way, f"{n * contribution_bytes / 2**20:,.1f}", fmt_s(u),
                fmt_s(c), fmt_s(u + c), f"{(u + c) / n * 1e3:.2f}",
                f"{(u + c) / (n * cts) * 1e6:.0f}",
                mib(before), mib(before + peak_delta), mib(peak_delta),
            ])
        if totals["streaming"] != totals["rebuild"]:
            raise AssertionError(f"size {size:,}, N={n}: the two ways' sums differ")
        if n == max(ns):
            expected = sum(vectors[i % k] for i in range(n))
            got = ckks.decrypt_vector(secret, totals["streaming"], length=size)
            err = float(np.max(np.abs(got - expected)))
            check = (f"size {size:,}, N={n}: max |decrypted sum - plaintext sum| = {err:.2e}; "
                     "the two ways' sums are the same bytes at every N")
            if err > 1e-3:
                raise AssertionError(f"aggregate is wrong: {check}")
        del contributions, totals
        gc.collect()
    return rows, fit_n, fit_t, encrypt_s, contribution_bytes, check


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run every size, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="N in (1, 5, 10), 34,560 only")
    parser.add_argument("--sizes", default="34560,262144")
    parser.add_argument("--n", default="1,10,50,100,200")
    parser.add_argument("--distinct", type=int, default=8,
                        help="distinct encrypted vectors cycled over the N contributions")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed repeats per (size, N); the median is reported")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.n = "34560", "1,5,10"
    sizes = [int(s) for s in args.sizes.split(",")]
    ns = sorted(int(n) for n in args.n.split(","))
    print_header("fedctx coordinator aggregation scaling (validate + homomorphic sum)",
                 quick=args.quick, torch_threads=False,
                 extra=[f"settings: sizes {sizes}, N {ns}, {args.distinct} distinct encrypted "
                        f"vectors, {args.repeats} repeat(s), CKKS defaults "
                        "(N=4096, 2048 values per ciphertext), seeded uploads",
                        "note    : TenSEAL work here is single-threaded (one core)"])
    secret = ckks.create_secret_context(ckks.CkksParams())
    public = ckks.load_public_context(ckks.serialize_public_context(secret))
    start = time.perf_counter()
    all_rows, fits, checks = [], [], []
    for size in sizes:
        rows, fit_n, fit_t, encrypt_s, contribution_bytes, check = run_size(
            size, ns, distinct=args.distinct, repeats=args.repeats, secret=secret, public=public)
        all_rows += rows
        a, b, r2 = fit_line(fit_n, fit_t)
        fits.append([f"{size:,}", f"{contribution_bytes:,}", fmt_s(encrypt_s), fmt_s(a),
                     f"{b * 1e3:.1f}", f"{r2:.4f}" if not math.isnan(r2) else "n/a",
                     f"{fit_t[-1] / fit_n[-1] / (fit_t[0] / fit_n[0]):.2f}"])
        checks.append(check)
    print_table(
        ["values", "N", "way", "inputs MiB", "at uploads", "at close", "total", "ms/contrib",
         "us/ct", "RSS before MiB", "peak RSS MiB", "peak - before MiB"],
        all_rows, left=0,
        title="Table 1. Validate and sum N contributions (public context): streamed into a "
              "running sum, or rebuilt at close")
    print_table(
        ["values", "bytes/contribution", "encrypt (participant)", "fit a (fixed)",
         "fit b (ms per contribution)", "R^2", "per-contrib cost, largest/smallest N"],
        fits, left=0,
        title="Table 2. Linearity of the streaming way: total = a + b*N (least squares)")
    for line in checks:
        print("correctness: " + line)
    print("peak - before: extra memory beyond the inputs this script holds (streaming keeps "
          "one loaded contribution and the running sum; rebuild loads all N at once).")
    print(f"\nfinished in {time.perf_counter() - start:.1f} s")
    print_footer()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
