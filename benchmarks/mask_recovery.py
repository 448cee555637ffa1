"""What dropout recovery (``max_dropouts``, ``privacy.mask_recovery``) adds to a round.

Run: ``.venv/bin/python benchmarks/mask_recovery.py [--participants 10 50 100 200]
[--length 121] [--repeats 3]``.

For each federation size ``n`` (``d = max(1, n // 10)`` dropouts allowed, threshold
``n - d``, and ``d`` participants actually missing) it times, per participant and round:

* *mask*: a fresh self-mask seed split into ``n`` Shamir shares and ``n - 1`` of them
  sealed (ChaCha20-Poly1305), plus the self-mask's expansion over the vector;
* *reveal*: opening the ``n - d - 1`` sealed shares the other survivors sent;
* *unmask*: reconstructing ``n - d`` self-mask seeds and ``d`` mask keys from the
  threshold's reveals, checking each key against its public key, and the correction (the
  survivors' self-masks and the missing participants' pair masks with every survivor);

and the bytes it adds: the sealed shares in the contribution's header, the reveals a
survivor uploads, and the reveals it downloads (protobuf-encoded, measured). Not timed:
the once-per-federation deposit of the R mask keys' shares (R masked rounds), n - 1 sealed
blobs of 66 R + 28 bytes, and one X25519 exchange per peer and round for the pair keys.
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

from privacy import mask_recovery, shamir  # noqa: E402
from privacy.keyshare import generate_x25519_keypair  # noqa: E402
from privacy.masking import pair_keys  # noqa: E402
from proto.fedctx.v1 import fedctx_pb2 as pb  # noqa: E402

BITS = 15  # a 10-participant federation's digit, one limb


def _best_s(fn, repeats: int):  # type: ignore[no-untyped-def]
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def _row(n: int, *, length: int, repeats: int) -> str:
    dropouts = max(1, n // 10)
    threshold = n - dropouts
    ids = [f"p{i:03d}" for i in range(n)]
    index = mask_recovery.share_indices(ids)
    survivors, missing = ids[:threshold], ids[threshold:]
    masks = {pid: generate_x25519_keypair() for pid in ids}
    publics = {pid: masks[pid][1] for pid in ids}
    me = ids[0]
    seal_keys = pair_keys(own_id=me, own_x25519_private=generate_x25519_keypair()[0],
                          peers={pid: generate_x25519_keypair()[1] for pid in ids[1:]},
                          federation_id="fed", purpose=mask_recovery.SHARE_SEAL_PURPOSE)

    def mask() -> list[pb.SealedShare]:
        seed = os.urandom(32)
        mask_recovery.self_mask(seed, round_id="r", length=length, bits=BITS)
        shares = shamir.split(seed, threshold=threshold, shares=n)
        return [pb.SealedShare(recipient_id=pid, sealed=mask_recovery.seal_share(
            seal_keys[pid], shares[index[pid]], federation_id="fed", round_id="r",
            owner_id=me, recipient_id=pid)) for pid in ids[1:]]

    mask_s, sealed = _best_s(mask, repeats)
    inbox = sealed[: threshold - 1]  # a survivor opens the other survivors' shares

    def reveal() -> None:
        for s in inbox:
            mask_recovery.open_share(seal_keys[s.recipient_id], s.sealed, federation_id="fed",
                                     round_id="r", owner_id=me, recipient_id=s.recipient_id)

    reveal_s, _ = _best_s(reveal, repeats)
    seeds = {pid: os.urandom(32) for pid in survivors}
    seed_shares = {pid: shamir.split(seeds[pid], threshold=threshold, shares=n)
                   for pid in survivors}
    key_shares = {pid: shamir.split(masks[pid][0], threshold=threshold, shares=n)
                  for pid in missing}
    revealers = [index[pid] for pid in survivors]

    def unmask() -> np.ndarray:
        got_seeds = {pid: shamir.combine({x: seed_shares[pid][x] for x in revealers},
                                         threshold=threshold, secret_bytes=32)
                     for pid in survivors}
        got_keys = {}
        for pid in missing:
            key = shamir.combine({x: key_shares[pid][x] for x in revealers},
                                 threshold=threshold, secret_bytes=32)
            assert mask_recovery.mask_private_key_matches(key, publics[pid])
            got_keys[pid] = key
        assert got_seeds == seeds
        return mask_recovery.correction(
            federation_id="fed", round_id="r", length=length, bits=BITS,
            survivor_seeds=got_seeds, dropped_keys=got_keys, mask_publics=publics)

    unmask_s, _ = _best_s(unmask, repeats)
    header = pb.ContributionHeader(mask_shares=sealed).ByteSize()
    reveals = [pb.RevealedShare(owner_id=pid, kind=pb.REVEALED_KIND_SELF_MASK,
                                share=bytes(66)) for pid in survivors]
    reveals += [pb.RevealedShare(owner_id=pid, kind=pb.REVEALED_KIND_MASK_KEY,
                                 share=bytes(66)) for pid in missing]
    upload = pb.RevealMaskSharesRequest(round_id="r", shares=reveals).ByteSize()
    download = pb.GetMaskSharesResponse(
        contributors=survivors, sealed=inbox,
        revealed=[pb.RevealedShare(revealer_id=a, owner_id=r.owner_id, kind=r.kind,
                                   share=r.share) for a in survivors for r in reveals]
    ).ByteSize()
    return (f"| {n} | {dropouts} | {mask_s * 1e3:.1f} | {reveal_s * 1e3:.1f} | "
            f"{unmask_s * 1e3:.0f} | {header:,} | {upload:,} | {download:,} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--participants", type=int, nargs="+", default=[10, 50, 100, 200])
    parser.add_argument("--length", type=int, default=121)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"# dropout recovery per participant and round, {args.length} values; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"best of {args.repeats}")
    print("| participants | dropouts (and missing) | mask ms | reveal ms | unmask ms | "
          "header bytes | reveal upload bytes | reveals download bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.participants:
        print(_row(n, length=args.length, repeats=args.repeats), flush=True)


if __name__ == "__main__":
    main()
