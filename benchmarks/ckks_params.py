"""Compare CKKS parameter sets for fedctx's add-only workload (sizes, speed, precision).

Run: ``.venv/bin/python benchmarks/ckks_params.py [--participants 10] [--repeats 3]``.

For each candidate it encrypts a 34,560-value vector (SmolLM2-135M: 2 x 30 layers x
576 hidden) per participant with entries uniform in [-200, 200], sums the
participants' ciphertexts under the *public* context, decrypts, and prints:
bytes per value (seeded symmetric upload, public-key upload, summed download), the
ratio to float32, encrypt / validate+sum / decrypt times, the max abs error of the
decrypted sum, the documented error bound, whether ``check_precision`` accepts the
project's workload, and the public / secret context sizes.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy import ckks  # noqa: E402
from privacy.errors import PrecisionError  # noqa: E402

VECTOR_LENGTH = 2 * 30 * 576  # 34,560 values
VALUE_BOUND = 200.0
T = TypeVar("T")

CANDIDATES: list[tuple[str, ckks.CkksParams]] = [
    ("default", ckks.CkksParams()),
    ("4096/40,40", ckks.CkksParams(4096, (40, 40), 21)),
    ("2048/40,14", ckks.CkksParams(2048, (40, 14), 20)),
    ("8192/60,60", ckks.CkksParams(8192, (60, 60), 38)),
    ("8192/60,40x2,60", ckks.CkksParams(8192, (60, 40, 40, 60), 40)),
]


@dataclass(frozen=True, slots=True)
class Row:
    """Measurements for one parameter set."""

    name: str
    params: ckks.CkksParams
    ciphertexts: int
    seeded_bpv: float
    public_key_bpv: float
    sum_bpv: float
    enc_seeded_ms: float
    enc_public_key_ms: float
    sum_ms: float
    dec_ms: float
    err_seeded: float
    err_public_key: float
    bound: float
    precision_ok: str
    public_ctx: int
    secret_ctx: int


def _best(fn: Callable[[], T], repeats: int) -> tuple[T, float]:
    times: list[float] = []
    result: T | None = None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    assert result is not None
    return result, min(times) * 1e3


def _precision_verdict(params: ckks.CkksParams, participants: int) -> str:
    verdicts = []
    for label, kwargs in (
        ("dp", {"n_summands": participants, "value_bound": VALUE_BOUND, "noise_std": 1e-3}),
        ("ovf", {"n_summands": 200, "value_bound": 1e3, "noise_std": None}),
    ):
        try:
            ckks.check_precision(params, **kwargs)  # type: ignore[arg-type]
            verdicts.append(f"{label}:ok")
        except PrecisionError:
            verdicts.append(f"{label}:NO")
    return " ".join(verdicts)


def measure(name: str, params: ckks.CkksParams, *, participants: int, repeats: int) -> Row:
    """Run the full encrypt / sum / decrypt pipeline for one parameter set."""
    secret = ckks.create_secret_context(params)
    public_bytes = ckks.serialize_public_context(secret)
    secret_bytes = ckks.serialize_secret_context(secret)
    public = ckks.load_public_context(public_bytes)
    rng = np.random.default_rng(0)
    vectors = [rng.uniform(-VALUE_BOUND, VALUE_BOUND, VECTOR_LENGTH) for _ in range(participants)]
    expected = np.sum(vectors, axis=0)
    magnitude_ok = float(np.max(np.abs(expected))) < params.max_magnitude

    seeded_one, enc_seeded_ms = _best(
        lambda: ckks.encrypt_vector(secret, vectors[0], seeded=True), repeats
    )
    public_key_one, enc_pk_ms = _best(
        lambda: ckks.encrypt_vector(secret, vectors[0], seeded=False), repeats
    )
    results: dict[str, float] = {}
    sum_ms = dec_ms = 0.0
    sum_bytes = 0
    for mode, seeded in (("seeded", True), ("public_key", False)):
        contributions = [ckks.encrypt_vector(secret, v, seeded=seeded) for v in vectors]

        def run_sum(c: list[list[bytes]] = contributions) -> list[bytes]:
            return ckks.sum_ciphertexts(public, c)

        total, t_sum = _best(run_sum, repeats)

        def run_decrypt(t: list[bytes] = total) -> np.ndarray:
            return ckks.decrypt_vector(secret, t, length=VECTOR_LENGTH)

        decrypted, t_dec = _best(run_decrypt, repeats)
        results[mode] = (
            float(np.max(np.abs(decrypted - expected))) if magnitude_ok else float("inf")
        )
        if seeded:
            sum_ms, dec_ms = t_sum, t_dec
            sum_bytes = sum(len(b) for b in total)
    return Row(
        name=name,
        params=params,
        ciphertexts=len(seeded_one),
        seeded_bpv=sum(len(b) for b in seeded_one) / VECTOR_LENGTH,
        public_key_bpv=sum(len(b) for b in public_key_one) / VECTOR_LENGTH,
        sum_bpv=sum_bytes / VECTOR_LENGTH,
        enc_seeded_ms=enc_seeded_ms,
        enc_public_key_ms=enc_pk_ms,
        sum_ms=sum_ms,
        dec_ms=dec_ms,
        err_seeded=results["seeded"],
        err_public_key=results["public_key"],
        bound=ckks.encoding_error_bound(params, n_summands=participants, value_bound=VALUE_BOUND),
        precision_ok=_precision_verdict(params, participants),
        public_ctx=len(public_bytes),
        secret_ctx=len(secret_bytes),
    )


def _print(rows: list[Row], participants: int) -> None:
    print(
        f"fedctx CKKS parameter benchmark: vector of {VECTOR_LENGTH} values, {participants} "
        f"participants, |x| <= {VALUE_BOUND:g}; python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; times = best of repeats"
    )
    print()
    header = (
        f"{'set':<16} {'N':>5} {'primes':<14} {'s':>3} {'cts':>3} "
        f"{'B/val seed':>10} {'B/val pk':>9} {'B/val sum':>9} {'x f32 seed':>10} {'x f32 pk':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        p = r.params
        primes = ",".join(map(str, p.coeff_mod_bit_sizes))
        print(
            f"{r.name:<16} {p.poly_modulus_degree:>5} {primes:<14} "
            f"{p.global_scale_bits:>3} {r.ciphertexts:>3} {r.seeded_bpv:>10.2f} "
            f"{r.public_key_bpv:>9.2f} {r.sum_bpv:>9.2f} {r.seeded_bpv / 4:>10.2f} "
            f"{r.public_key_bpv / 4:>8.2f}"
        )
    print()
    header = (
        f"{'set':<16} {'enc seed ms':>11} {'enc pk ms':>9} {'sum10 ms':>8} {'dec ms':>7} "
        f"{'ns/val enc':>10} {'err seed':>9} {'err pk':>9} {'bound':>9} {'check_precision':>16} "
        f"{'pub ctx B':>9} {'sec ctx B':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r.name:<16} {r.enc_seeded_ms:>11.1f} {r.enc_public_key_ms:>9.1f} {r.sum_ms:>8.1f} "
            f"{r.dec_ms:>7.1f} {r.enc_seeded_ms * 1e6 / VECTOR_LENGTH:>10.0f} "
            f"{r.err_seeded:>9.2e} {r.err_public_key:>9.2e} {r.bound:>9.2e} "
            f"{r.precision_ok:>16} {r.public_ctx:>9} {r.secret_ctx:>9}"
        )
    print()
    print(
        "B/val seed: seeded symmetric upload (participant -> coordinator); B/val pk: public-key\n"
        "upload; B/val sum: the summed aggregate (never seeded). x f32: ratio to 4-byte float32.\n"
        "sum10 = validate + add the participants' ciphertexts under the public context.\n"
        "err = max |decrypted sum - plaintext sum|; bound = encoding_error_bound(n=participants).\n"
        "check_precision: dp = (participants, |x|<=200, noise std 1e-3); "
        "ovf = (200 summands, |x|<=1e3)."
    )


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, benchmark every candidate and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = [
        measure(name, params, participants=args.participants, repeats=args.repeats)
        for name, params in CANDIDATES
    ]
    _print(rows, args.participants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
