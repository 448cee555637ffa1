"""Bytes a participant sends per round: CKKS payloads vs plaintext vs published IFed-ICL figures.

Run: ``.venv/bin/python benchmarks/communication.py [--quick]``.

Part 1 (offline, exact): for the context vector (2 x L x d values) and the coefficient
update (4 x L values) of SmolLM2-135M (L=30, d=576) and of a 7-8B model (L=32, d=4096), the
framed ciphertext payload a participant uploads (``payload.frame(ckks.encrypt_vector(...))``)
with seeded symmetric encryption (the default when the participant holds the secret key)
and with public-key encryption (``seeded=False``), the encrypted aggregate it downloads,
plaintext float32 / float16 sizes, ratios, and the published IFed-ICL figures.

Part 2 (on the wire): a real in-process coordinator with mutual TLS on loopback, two
participants, the real key ceremony; a TCP relay between client and server counts the
bytes that really cross the socket (TLS records + HTTP/2 + protobuf) for the key ceremony,
each upload and each download, next to ``CoordinatorClient.bytes_sent`` (application bytes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import (
    ByteCountingProxy,
    LoopbackFederation,
    fmt_bytes,
    print_footer,
    print_header,
    print_table,
)
from privacy import ckks, payload

# Published IFed-ICL figures (arXiv 2511.06757), in KB; KB taken as 1,000 bytes.
IFED_VECTOR_KB = 514.0
IFED_CALIB_ROUND_KB = 1.8
FEDAVG_LORA_ROUND_KB = 13_357.78
KB = 1000.0

SHAPES = {
    "SmolLM2-135M": (30, 576),
    "7-8B (L=32, d=4096)": (32, 4096),
}


def payload_sizes(ctx, public_ctx, n: int, rng: np.random.Generator) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Framed byte counts for one vector of ``n`` values (values ~ N(0, 1))."""
    values = rng.normal(size=n)
    seeded = ckks.encrypt_vector(ctx, values, seeded=True)
    public_key = ckks.encrypt_vector(ctx, values, seeded=False)
    total = ckks.sum_ciphertexts(public_ctx, [seeded, seeded])
    return {
        "ciphertexts": len(seeded),
        "seeded": len(payload.frame(seeded)),
        "public_key": len(payload.frame(public_key)),
        "aggregate": len(payload.frame(total)),
    }


def offline_tables(rounds: int) -> dict[str, dict[str, int]]:
    """Part 1: exact payload sizes; prints two tables and returns the sizes."""
    ctx = ckks.create_secret_context(ckks.CkksParams())
    public_bytes = ckks.serialize_public_context(ctx)
    public_ctx = ckks.load_public_context(public_bytes)
    secret_bytes = ckks.serialize_secret_context(ctx)
    rng = np.random.default_rng(0)
    sizes: dict[str, dict[str, int]] = {}
    rows = []
    for model, (layers, width) in SHAPES.items():
        for what, n in (("context vector 2Ld", 2 * layers * width),
                        ("coefficients 4L", 4 * layers)):
            s = payload_sizes(ctx, public_ctx, n, rng)
            s["n"] = n
            sizes[f"{model}|{what}"] = s
            rows.append([
                model, what, f"{n:,}", s["ciphertexts"], fmt_bytes(4 * n), fmt_bytes(2 * n),
                fmt_bytes(s["seeded"]), fmt_bytes(s["public_key"]), fmt_bytes(s["aggregate"]),
                f"{s['seeded'] / (4 * n):.2f}", f"{s['public_key'] / (4 * n):.2f}",
                f"{s['seeded'] / (2 * n):.2f}", f"{s['seeded'] / n:.1f}",
            ])
    print_table(
        ["model", "payload", "values", "cts", "f32 B", "f16 B", "CKKS seeded B", "CKKS pk B",
         "aggregate B", "seeded/f32", "pk/f32", "seeded/f16", "B/value"],
        rows, left=2,
        title="Table 1. Upload payload per participant per round (framed ciphertexts; "
              "CKKS N=4096, primes (60,49), scale 2^38, 2048 values per ciphertext)",
    )
    print("seeded = symmetric-key encryption with the second polynomial stored as a PRNG seed "
          "(default, participant holds the secret key);\npk = public-key encryption "
          "(ckks.encrypt_vector(..., seeded=False)); aggregate = the encrypted sum each "
          "participant downloads (never seeded).\n")

    rows = []
    for model in SHAPES:
        vec = sizes[f"{model}|context vector 2Ld"]
        coef = sizes[f"{model}|coefficients 4L"]
        for label, ours, published in (
            ("context vector upload", vec["seeded"], IFED_VECTOR_KB),
            ("context vector upload (pk)", vec["public_key"], IFED_VECTOR_KB),
            ("calibration round upload", coef["seeded"], IFED_CALIB_ROUND_KB),
            ("calibration round upload (pk)", coef["public_key"], IFED_CALIB_ROUND_KB),
            ("calibration round upload", coef["seeded"], FEDAVG_LORA_ROUND_KB),
        ):
            ref = "IFed-ICL" if published != FEDAVG_LORA_ROUND_KB else "FedAvg-LoRA (per round)"
            rows.append([model, label, f"{ours / KB:,.1f}", ref, f"{published:,.2f}",
                         f"{ours / (published * KB):.3f}"])
        total = vec["seeded"] + rounds * coef["seeded"]
        rows.append([model, f"whole protocol: vector + {rounds} rounds", f"{total / KB:,.1f}",
                     "IFed-ICL", f"{IFED_VECTOR_KB + rounds * IFED_CALIB_ROUND_KB:,.1f}",
                     f"{total / ((IFED_VECTOR_KB + rounds * IFED_CALIB_ROUND_KB) * KB):.3f}"])
        rows.append([model, f"whole protocol: vector + {rounds} rounds", f"{total / KB:,.1f}",
                     f"FedAvg-LoRA x {rounds}", f"{rounds * FEDAVG_LORA_ROUND_KB:,.1f}",
                     f"{total / (rounds * FEDAVG_LORA_ROUND_KB * KB):.4f}"])
    print_table(["model", "quantity", "fedctx KB", "published", "published KB", "fedctx/published"],
                rows, left=2,
                title="Table 2. fedctx (encrypted) vs published plaintext figures "
                      "(KB = 1,000 bytes; with KB = 1,024 the ratios are 2.3% lower)")
    print("The published figures are plaintext (IFed-ICL sends unencrypted vectors); 514 KB is "
          "about 262,144 float16 values.\nA coefficient update (120-128 values) fills a single "
          "CKKS ciphertext of 2,048 slots, hence its fixed ~33 kB.\n")

    print_table(
        ["key material (one-time)", "bytes", "note"],
        [["public CKKS context", fmt_bytes(len(public_bytes)), "keyholder -> coordinator, once"],
         ["secret CKKS context (sealed per recipient)", fmt_bytes(len(secret_bytes)),
          "keyholder uploads roster-1 of them in one PublishKeys"],
         ["PublishKeys at roster R (approx.)",
          f"{len(public_bytes):,} + (R-1) x ~{len(secret_bytes) + 300:,}",
          f"exceeds the 16 MiB gRPC limit from R ~ "
          f"{int((16 * 2**20 - len(public_bytes)) // (len(secret_bytes) + 300)) + 2}"]],
        left=1, title="Table 3. Key ceremony payloads")
    return sizes


def wire_table(sizes: dict[str, dict[str, int]], *, quick: bool) -> None:
    """Part 2: bytes on the socket for a real federation of two participants."""
    ids = ["org1", "org2"]
    rng = np.random.default_rng(1)
    with LoopbackFederation(ids) as fed:
        proxy = ByteCountingProxy(fed.port)
        fed.client_port = proxy.port
        try:
            rows = []
            org1, org2 = fed.client("org1"), fed.client("org2")
            for client in (org1, org2):
                client.wait_ready(timeout_s=30)
                client.federation()
            handshake = proxy.settle()
            rows.append(["connect + TLS handshake + GetFederation (2 channels)", "", "",
                         fmt_bytes(handshake[0]), fmt_bytes(handshake[1]), ""])
            up0, down0 = proxy.settle()
            app0 = org1.bytes_sent + org2.bytes_sent
            ceremony = fed.key_ceremony()
            up1, down1 = proxy.settle()
            rows.append(["key ceremony (2 announce, list, publish, fetch)", "",
                         fmt_bytes(org1.bytes_sent + org2.bytes_sent - app0),
                         fmt_bytes(up1 - up0), fmt_bytes(down1 - down0), ""])
            federation = ceremony.federation
            ctx = ceremony.secret_context
            shapes = list(SHAPES.items())[:1] if quick else list(SHAPES.items())
            for model, (layers, width) in shapes:
                for what, n, kind in (("context vector", 2 * layers * width, "context_vector"),
                                      ("coefficients", 4 * layers, "coefficient_update")):
                    for mode, seeded in (("seeded", True), ("pk", False)):
                        round_id = f"{kind}-{layers}x{width}-{mode}"
                        blobs = {pid: ckks.encrypt_vector(ctx, rng.normal(size=n), seeded=seeded)
                                 for pid in ids}
                        up_a, _ = proxy.settle()
                        app_a = org1.bytes_sent
                        org1.submit(fed.header(federation, round_id, n, kind), blobs["org1"],
                                    chunk_bytes=federation.chunk_bytes)
                        up_b, _ = proxy.settle()
                        app_b = org1.bytes_sent
                        org2.submit(fed.header(federation, round_id, n, kind), blobs["org2"],
                                    chunk_bytes=federation.chunk_bytes)
                        org1.wait_for_round(round_id, timeout_s=60)
                        _, down_a = proxy.settle()
                        aggregate = org1.download_aggregate(round_id)
                        _, down_b = proxy.settle()
                        total = ckks.decrypt_vector(ctx, aggregate.blobs, length=n)
                        assert total.shape == (n,)
                        rows.append([f"{model}: {what} upload ({mode})", f"{n:,}",
                                     fmt_bytes(app_b - app_a), fmt_bytes(up_b - up_a), "",
                                     f"{(up_b - up_a) / (app_b - app_a):.3f}"])
                        rows.append([f"{model}: {what} aggregate download", f"{n:,}",
                                     fmt_bytes(aggregate.payload_bytes), "",
                                     fmt_bytes(down_b - down_a),
                                     f"{(down_b - down_a) / aggregate.payload_bytes:.3f}"])
            print_table(
                ["what (one participant)", "values", "app bytes", "wire up B", "wire down B",
                 "wire/app"],
                rows, left=1,
                title="Table 4. Bytes on the wire (TCP payload through a counting relay: TLS 1.3 "
                      "records + HTTP/2 frames + protobuf), mutual-TLS gRPC on 127.0.0.1")
            print("app bytes = CoordinatorClient.bytes_sent delta for uploads (framed payload + "
                  "header), framed aggregate size for downloads;\nwire bytes include gRPC's "
                  "own acknowledgements/pings in that window. Ceremony row: 2 participants, "
                  "so one sealed key.")
        finally:
            proxy.close()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="skip the 7-8B-size uploads on the wire (tables 1-3 are exact anyway)")
    parser.add_argument("--rounds", type=int, default=4, help="calibration rounds (demo: 4)")
    args = parser.parse_args(argv)
    print_header("fedctx communication per participant", quick=args.quick)
    start = time.perf_counter()
    sizes = offline_tables(args.rounds)
    wire_table(sizes, quick=args.quick)
    print(f"\nfinished in {time.perf_counter() - start:.1f} s")
    print_footer()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
