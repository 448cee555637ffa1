"""What pairwise masking (distributed DP, ``max_colluders``) adds to a participant's round.

Run: ``.venv/bin/python benchmarks/masking.py [--participants 10] [--limbs 1] [--repeats 5]``.

For each vector length (120 coefficient values of SmolLM2-135M's calibration, 34,560 and
262,144 values) it times, per participant and round: deriving the pair keys from X25519
(once per federation), expanding and combining the n - 1 round masks, the fixed-point
encoding, the CKKS encryption of the masked vector (what a round costs anyway) and the
unmasking of the decrypted sum, and checks that the unmasked sum of n participants equals
the plain sum to the fixed point's step. Prints milliseconds and the ratio of masking work
to the encryption it rides with. ``--limbs 2`` splits each value into two digits (what a
federation of 20 or more takes, ``privacy.masking.fixed_point_limbs``): twice the slots.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privacy import ckks  # noqa: E402
from privacy.keyshare import generate_x25519_keypair  # noqa: E402
from privacy.masking import (  # noqa: E402
    combined_mask,
    mask_values,
    modulus_bits,
    pair_keys,
    unmask_sum,
)

LENGTHS = (120, 2 * 30 * 576, 262_144)


def _best_ms(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, default=10)
    parser.add_argument("--limbs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    n = args.participants
    ids = [f"p{i:03d}" for i in range(n)]
    pairs = {pid: generate_x25519_keypair() for pid in ids}
    start = time.perf_counter()
    keys = {pid: pair_keys(own_id=pid, own_x25519_private=pairs[pid][0],
                           peers={q: pairs[q][1] for q in ids if q != pid}, federation_id="bench")
            for pid in ids}
    keys_ms = (time.perf_counter() - start) * 1e3 / n
    params = ckks.CkksParams()
    context = ckks.create_secret_context(params)
    bits = modulus_bits(participants=n, params=params)
    rng = np.random.default_rng(0)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{n} participants, modulus 2^{bits} x {args.limbs} limbs, default CKKS parameters")
    print(f"pair keys: {keys_ms:.2f} ms per participant (once per federation)")
    print("| values | masks (ms) | fixed point + mask (ms) | CKKS encrypt (ms) | unmask (ms) "
          "| masking / encrypt | max error / step |")
    print("|---|---|---|---|---|---|---|")
    for length in LENGTHS:
        print(_row(length, ids=ids, keys=keys, context=context, bits=bits, limbs=args.limbs,
                   rng=rng, repeats=args.repeats))


def _row(length: int, *, ids, keys, context, bits: int, limbs: int, rng, repeats: int) -> str:  # type: ignore[no-untyped-def]
    """One table row: times for one participant's round at ``length`` values."""
    n, own = len(ids), ids[0]
    values = {pid: rng.normal(0, 0.3, length) for pid in ids}
    fixed = {"bound": 2.0, "participants": n, "bits": bits, "limbs": limbs}
    masks_ms = _best_ms(lambda: combined_mask(
        keys[own], own_id=own, round_id="r", length=length, bits=bits * limbs), repeats)
    mask = combined_mask(keys[own], own_id=own, round_id="r", length=length,
                         bits=bits * limbs)
    encode_ms = _best_ms(lambda: mask_values(values[own], mask=mask, rng=rng, **fixed),
                         repeats)
    masked, _ = mask_values(values[own], mask=mask, rng=rng, **fixed)
    encrypt_ms = _best_ms(lambda: ckks.encrypt_vector(context, masked), repeats)
    total = np.zeros(limbs * length)
    for pid in ids:
        net = combined_mask(keys[pid], own_id=pid, round_id="r", length=length,
                            bits=bits * limbs)
        total += mask_values(values[pid], mask=net, rng=rng, **fixed)[0]
    unmask_ms = _best_ms(lambda: unmask_sum(total, **fixed), repeats)
    summed = unmask_sum(total, **fixed)
    step = n * 2.0 / (1 << (limbs * bits - 1))
    error = np.abs(summed - sum(np.clip(v, -2, 2) for v in values.values())).max() / step
    return (f"| {length:,} | {masks_ms:.2f} | {encode_ms:.2f} | {encrypt_ms:.2f} "
            f"| {unmask_ms:.2f} | {(masks_ms + encode_ms + unmask_ms) / encrypt_ms:.2f} "
            f"| {error:.2f} |")

if __name__ == "__main__":
    main()
