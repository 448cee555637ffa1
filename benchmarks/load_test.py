"""Load test: many participants upload their encrypted context vectors at the same moment.

Run: ``.venv/bin/python benchmarks/load_test.py [--quick]``.

Setup (not timed): a throwaway CA with one certificate per participant id (100 by default),
a real in-process ``CoordinatorServer`` on 127.0.0.1:0 (mutual TLS) whose roster is all of
them, and the real key ceremony over gRPC: every participant announces a signed X25519 key,
the keyholder verifies them, seals the CKKS secret context to each and publishes, and every
participant fetches and opens its sealed key (checked equal to the keyholder's). Each
participant then encrypts its own random vector of ``--length`` values (34,560: SmolLM2-135M)
once, with the keyholder's context (same key; the coordinator cannot tell), and connects its
own channel.

Timed: one thread per participant, released together by a barrier, calls
``CoordinatorClient.submit`` (``SubmitContribution``, streamed in the federation's chunks).
The last accepted upload closes the round, so its latency includes the homomorphic sum.
Printed: throughput (uploads/s, MB/s of framed payload), latency percentiles, the sum's
time, process memory (server and clients share this process: VmRSS before, VmHWM during,
VmRSS after; the high-water mark is reset just before the release), and the checks that
nothing was lost: every upload accepted, the round closed with exactly N contributions from N
distinct participants, and the decrypted aggregate equals the plaintext sum.

This script found that ``PublishKeys`` once carried one ~187 kB sealed context per
participant and exceeded gRPC's 16 MiB limit from about 90 participants; the secret context
is now encrypted once and only a 32-byte data key is sealed per participant.
"""

from __future__ import annotations

import argparse
import threading
import time

import grpc
import numpy as np

from _common import (
    LoopbackFederation,
    fmt_s,
    mib,
    percentile,
    print_footer,
    print_header,
    print_table,
    reset_peak_rss,
    rss_kib,
    time_calls,
)
from privacy import ckks, payload
from proto.fedctx.v1 import fedctx_pb2 as pb


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - a linear script
    """Parse arguments, run the load test, print the tables and checks."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 participants")
    parser.add_argument("--participants", type=int, default=100)
    parser.add_argument("--length", type=int, default=34_560, help="values per vector")
    parser.add_argument("--max-workers", type=int, default=16,
                        help="coordinator gRPC thread pool (CoordinatorConfig default 16)")
    args = parser.parse_args(argv)
    if args.quick:
        args.participants = 10
    n = args.participants
    print_header("fedctx coordinator load test (concurrent uploads)", quick=args.quick,
                 torch_threads=False, extra=[
                     f"settings: {n} participants, each its own certificate and mTLS channel, "
                     f"vector of {args.length:,} values (seeded CKKS), coordinator max_workers "
                     f"{args.max_workers}, one thread per participant, 127.0.0.1"])
    start_all = time.perf_counter()
    ids = [f"p{i:03d}" for i in range(n)]
    setup: dict[str, float] = {}
    with LoopbackFederation(ids, round_timeout_s=600, max_workers=args.max_workers) as fed:
        setup["provision PKI"] = fed.provision_seconds
        start = time.perf_counter()
        ceremony = fed.key_ceremony(allow_in_process_publish=True)
        setup["key ceremony (total)"] = time.perf_counter() - start
        for step, seconds in ceremony.seconds.items():
            setup[f"  {step}"] = seconds
        federation = ceremony.federation
        context = ceremony.secret_context
        rng = np.random.default_rng(0)
        values = {pid: rng.normal(size=args.length) for pid in ids}
        start = time.perf_counter()
        blobs = {pid: ckks.encrypt_vector(context, values[pid]) for pid in ids}
        setup["encrypt (per participant)"] = (time.perf_counter() - start) / n
        payload_bytes = {pid: len(payload.frame(b)) for pid, b in blobs.items()}
        clients = {pid: fed.client(pid) for pid in ids}
        for client in clients.values():  # channels are up (announce/fetch used them); check
            client.wait_ready(timeout_s=30)

        round_id = "load-1"
        latency: dict[str, float] = {}
        receipts: dict[str, pb.SubmitContributionResponse] = {}
        errors: dict[str, str] = {}
        barrier = threading.Barrier(n + 1)

        def upload(pid: str) -> None:
            header = fed.header(federation, round_id, args.length)
            barrier.wait()
            begin = time.perf_counter()
            try:
                receipts[pid] = clients[pid].submit(header, blobs[pid],
                                                    chunk_bytes=federation.chunk_bytes)
            except Exception as exc:  # noqa: BLE001 - reported below
                code = exc.code() if isinstance(exc, grpc.RpcError) else ""
                details = exc.details() if isinstance(exc, grpc.RpcError) else exc
                errors[pid] = f"{type(exc).__name__}: {code} {details}"
            finally:
                latency[pid] = time.perf_counter() - begin

        threads = [threading.Thread(target=upload, args=(pid,), name=f"upload-{pid}")
                   for pid in ids]
        for thread in threads:
            thread.start()
        rss_before = rss_kib()
        hwm_reset = reset_peak_rss()
        with time_calls(fed.server.aggregator, "_close") as closes:
            barrier.wait()
            wall_start = time.perf_counter()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - wall_start
        rss_after = rss_kib()

        # -- nothing lost? ---------------------------------------------------------------
        status = clients[ids[0]].round(round_id)
        stored = fed.server.store.contributions(round_id)
        download_s, err, aggregated = float("nan"), float("nan"), 0
        if status.state == pb.ROUND_STATE_CLOSED:
            start = time.perf_counter()
            aggregate = clients[ids[-1]].download_aggregate(round_id)
            download_s = time.perf_counter() - start
            aggregated = aggregate.contributions
            total = ckks.decrypt_vector(context, aggregate.blobs, length=args.length)
            expected = np.sum([values[pid] for pid in ids], axis=0)
            err = float(np.max(np.abs(total - expected)))
        closing = [pid for pid, r in receipts.items() if r.state == pb.ROUND_STATE_CLOSED]

    lat = list(latency.values())
    total_payload = sum(payload_bytes.values())
    print_table(["setup step (not timed)", "time"],
                [[k, fmt_s(v)] for k, v in setup.items()],
                title=f"Table 1. Setup (PublishKeys path: {ceremony.publish_path})")
    rows = [
        ["participants uploading concurrently", f"{n}"],
        ["payload per upload (framed)", f"{payload_bytes[ids[0]]:,} B"],
        ["wall time, release -> last upload answered", fmt_s(wall)],
        ["throughput", f"{n / wall:.1f} uploads/s"],
        ["throughput (framed payload)", f"{total_payload / wall / 1e6:.1f} MB/s "
                                        f"({total_payload / wall / 2**20:.1f} MiB/s)"],
        ["SubmitContribution latency p50", fmt_s(percentile(lat, 50))],
        ["SubmitContribution latency p90", fmt_s(percentile(lat, 90))],
        ["SubmitContribution latency p99", fmt_s(percentile(lat, 99))],
        ["SubmitContribution latency max", fmt_s(max(lat))],
        ["  of which the closing upload", fmt_s(latency[closing[0]]) if closing else "n/a"],
        ["coordinator sum at close (Aggregator._close)",
         fmt_s(closes[-1]) if closes else "n/a (not closed)"],
        ["aggregate download + digest check", fmt_s(download_s)],  # n/a if not closed
        ["process VmRSS before release", f"{mib(rss_before['VmRSS'])} MiB"],
        ["process VmHWM during uploads" + ("" if hwm_reset else " (HWM not resettable)"),
         f"{mib(rss_after['VmHWM'])} MiB"],
        ["process VmRSS after", f"{mib(rss_after['VmRSS'])} MiB"],
        ["peak - before", f"{mib(rss_after['VmHWM'] - rss_before['VmRSS'])} MiB"],
    ]
    print_table(["measure", "value"], rows, left=1,
                title="Table 2. Concurrent uploads (server and clients share this process)")
    checks = [
        ["uploads accepted", f"{len(receipts)}/{n}", len(receipts) == n],
        ["upload errors", f"{len(errors)}", not errors],
        ["duplicates reported", f"{sum(r.duplicate for r in receipts.values())}",
         not any(r.duplicate for r in receipts.values())],
        ["round state", pb.RoundState.Name(status.state), status.state == pb.ROUND_STATE_CLOSED],
        ["contributions in round", f"{status.contributions}", status.contributions == n],
        ["distinct participants stored", f"{len({p for p, _ in stored})}",
         len({p for p, _ in stored}) == n],
        ["contributions in aggregate", f"{aggregated}", aggregated == n],
        ["uploads that closed the round", f"{len(closing)}", len(closing) == 1],
        ["max |decrypted sum - plaintext sum|", f"{err:.2e}", err < 1e-3],
    ]
    print_table(["check", "value", "ok"], [[c, v, "yes" if ok else "NO"] for c, v, ok in checks],
                left=1, title="Table 3. Nothing lost")
    for pid, message in sorted(errors.items())[:10]:
        print(f"error {pid}: {message}")
    ok = all(c[2] for c in checks)
    print(f"RESULT: {'PASS' if ok else 'FAIL'}")
    print("latency = time of CoordinatorClient.submit (framing + SHA-256 + stream + server "
          "validation + durable write; + the sum for the closing upload).")
    print(f"\nfinished in {time.perf_counter() - start_all:.1f} s")
    print_footer()
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
