"""Cost of the private path of a vector round vs the forward passes that extract the vector.

Run: ``.venv/bin/python benchmarks/privacy_overhead.py [--quick]``.

On the default model (smollm2-135m) and the sst2 shared data, participant 1 extracts its
context vector from N demonstrations (``last_token_activations``: the model forward passes),
then runs the private path of ``Participant.run`` / ``Participant.secure_mean``:

1. clip + noise: ``private_deviation_mean`` (per-record whitened clipping, Gaussian noise);
2. ``ckks.check_precision`` (as ``Participant._check_precision``);
3. encrypt: ``ckks.encrypt_vector`` (seeded, the default), through ``Participant.crypto()``'s
   ``CkksWorkers`` with ``--ckks-workers`` processes (1: in this process, the default);
4. upload: ``CoordinatorClient.submit`` to a real in-process ``CoordinatorServer`` over mutual
   TLS on 127.0.0.1:0 (includes the coordinator's validation and durable write);
5. aggregate: the coordinator's homomorphic sum when the round closes (``Aggregator._close``,
   timed by wrapping it; it runs inside the last participant's upload);
6. download: ``CoordinatorClient.download_aggregate``;
7. decrypt: ``ckks.decrypt_vector`` (the same workers) and division by the contribution count.

Federations of 1..3 participants (each its own certificate, channel and opened CKKS key,
after the real key ceremony over gRPC); participant 1 uploads first, the others after it, so
its upload time does not include the sum. The decrypted mean is checked against the plaintext
mean of the participants' noised deviations. Privacy overhead = sum of stages 1-7; the target
is overhead / forward <= 0.10. The key ceremony (once per federation) and the public reference
(public text, once per task) are reported separately; ledger writes are not included.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import (
    SHARED_DATA,
    LoopbackFederation,
    fmt_s,
    median,
    print_footer,
    print_header,
    print_table,
    quiet_transformers,
    set_torch_threads,
    time_calls,
)
from participant.context_vectors import (
    default_vector_clip_norm,
    last_token_activations,
    private_deviation_mean,
    public_reference,
)
from participant.data import balanced_sample, load_split
from participant.layers import layer_map_fingerprint, resolve_layer_sites
from participant.model import load_model
from participant.tasks import load_task
from privacy import ckks
from privacy.ckks_workers import CkksWorkers

STAGES = ["clip + noise", "check_precision", "encrypt", "upload", "aggregate (coordinator sum)",
          "download", "decrypt"]


def main(argv: list[str] | None = None) -> int:  # noqa: PLR0915 - a linear script
    """Parse arguments, run the measurements, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 demonstrations, 1-2 participants")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--device", default="cpu", help="where the model runs (cpu, cuda...)")
    parser.add_argument("--data-dir", default=str(SHARED_DATA / "sst2"))
    parser.add_argument("--demos", type=int, default=64, help="demonstrations per participant")
    parser.add_argument("--participants", default="1,2,3")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per federation (median)")
    parser.add_argument("--batch-size", type=int, default=16, help="forward batch (default 16)")
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--ckks-workers", type=int, default=1,
                        help="processes encrypting and decrypting for participant 1 "
                             "(the participant's ckks_workers; 1: in this process)")
    args = parser.parse_args(argv)
    if args.quick:
        args.demos, args.participants, args.repeats = 8, "1,2", 1
    set_torch_threads(args.threads)
    quiet_transformers()
    sizes = sorted(int(p) for p in args.participants.split(","))
    print_header("fedctx privacy overhead of a vector round", quick=args.quick, extra=[
        f"settings: model {args.model} on {args.device}, task sst2 ({args.data_dir}), "
        f"{args.demos} demonstrations per participant, batch {args.batch_size}, "
        f"noise multiplier {args.noise_multiplier}, CKKS workers {args.ckks_workers}, "
        f"participants {sizes}, {args.repeats} round(s) each (median)"])
    start_all = time.perf_counter()

    start = time.perf_counter()
    lm = load_model(args.model, device=args.device)
    sites = resolve_layer_sites(lm.model)
    load_s = time.perf_counter() - start
    task = load_task("sst2")
    train = load_split(task, "train", data_dir=args.data_dir)
    ids = [f"org{i + 1}" for i in range(max(sizes))]
    # Disjoint, class-balanced demonstrations per participant.
    demos = {
        pid: balanced_sample(train[i :: len(ids)], per_class=args.demos // 2,
                             num_classes=len(task.labels), seed=i)
        for i, pid in enumerate(ids)
    }
    texts = {pid: [task.demonstration(e.text, e.label) for e in ex] for pid, ex in demos.items()}

    start = time.perf_counter()
    reference = public_reference(lm, sites, task, batch_size=args.batch_size)
    reference_s = time.perf_counter() - start
    shape = reference.vector.shape
    length = int(np.prod(shape))

    # Warm-up, then the timed forward passes of participant 1.
    last_token_activations(lm, sites, texts[ids[0]][: args.batch_size], batch_size=args.batch_size)
    forward_times = []
    acts = {}
    for _ in range(max(1, args.repeats)):
        start = time.perf_counter()
        acts[ids[0]] = last_token_activations(lm, sites, texts[ids[0]], batch_size=args.batch_size)
        forward_times.append(time.perf_counter() - start)
    forward_s = median(forward_times)
    for pid in ids[1:]:
        acts[pid] = last_token_activations(lm, sites, texts[pid], batch_size=args.batch_size)
    clip = default_vector_clip_norm(2 * shape[1])
    sigma = args.noise_multiplier

    results: dict[int, dict[str, float]] = {}
    ceremonies: dict[int, dict[str, float]] = {}
    for p in sizes:
        roster = ids[:p]
        with LoopbackFederation(roster, model_fingerprint=lm.fingerprint,
                                layer_map_fingerprint=layer_map_fingerprint(sites)) as fed:
            ceremony = fed.key_ceremony()
            ceremonies[p] = ceremony.seconds
            federation = ceremony.federation
            contexts = {pid: ckks.load_secret_context(ceremony.opened[pid]) for pid in roster}
            clients = {pid: fed.client(pid) for pid in roster}
            crypto = CkksWorkers(contexts[roster[0]], workers=args.ckks_workers)
            crypto.decrypt(crypto.encrypt(np.ones(length)), length=length)  # workers started
            stage_times: dict[str, list[float]] = {s: [] for s in STAGES}
            generator = torch.Generator().manual_seed(p)
            for r in range(max(1, args.repeats)):
                round_id = f"vector-{r}"
                t: dict[str, float] = {}
                me = roster[0]
                start = time.perf_counter()
                deviation = private_deviation_mean(
                    acts[me], reference, clip_norm=clip, noise_multiplier=sigma,
                    generator=generator).numpy().ravel()
                t["clip + noise"] = time.perf_counter() - start
                start = time.perf_counter()
                noise_std = float(sigma * clip * float(reference.block_scales.min()) / args.demos)
                ckks.check_precision(ckks.CkksParams(), n_summands=len(federation.roster),
                                     value_bound=max(1.0, float(np.abs(deviation).max()) * 4),
                                     noise_std=noise_std)
                t["check_precision"] = time.perf_counter() - start
                start = time.perf_counter()
                blobs = crypto.encrypt(deviation)
                t["encrypt"] = time.perf_counter() - start
                deviations = {me: deviation}
                with time_calls(fed.server.aggregator, "_close") as closes:
                    start = time.perf_counter()
                    clients[me].submit(fed.header(federation, round_id, length), blobs,
                                       chunk_bytes=federation.chunk_bytes)
                    t["upload"] = time.perf_counter() - start
                    for pid in roster[1:]:
                        deviations[pid] = private_deviation_mean(
                            acts[pid], reference, clip_norm=clip, noise_multiplier=sigma,
                            generator=generator).numpy().ravel()
                        clients[pid].submit(
                            fed.header(federation, round_id, length),
                            ckks.encrypt_vector(contexts[pid], deviations[pid]),
                            chunk_bytes=federation.chunk_bytes)
                    clients[me].wait_for_round(round_id, timeout_s=120, poll_s=0.01)
                if not closes:
                    raise AssertionError("the round closed without Aggregator._close being timed")
                t["aggregate (coordinator sum)"] = closes[-1]
                if p == 1:  # the only upload also closed the round
                    t["upload"] -= closes[-1]
                start = time.perf_counter()
                aggregate = clients[me].download_aggregate(round_id)
                t["download"] = time.perf_counter() - start
                start = time.perf_counter()
                mean = crypto.decrypt(aggregate.blobs, length=length)
                mean = mean / aggregate.contributions
                t["decrypt"] = time.perf_counter() - start
                expected = np.mean([deviations[pid] for pid in roster], axis=0)
                err = float(np.max(np.abs(mean - expected)))
                if aggregate.contributions != p or err > 1e-5:
                    raise AssertionError(f"wrong aggregate: {aggregate.contributions} "
                                         f"contributions, max error {err:.2e}")
                for stage in STAGES:
                    stage_times[stage].append(t[stage])
            crypto.close()
            results[p] = {s: median(v) for s, v in stage_times.items()}

    rows = [["model forward: last_token_activations", *[fmt_s(forward_s) for _ in sizes],
             *["100.0%" for _ in sizes]]]
    for stage in STAGES:
        rows.append([f"  {stage}", *[fmt_s(results[p][stage]) for p in sizes],
                     *[f"{100 * results[p][stage] / forward_s:.1f}%" for p in sizes]])
    totals = {p: sum(results[p].values()) for p in sizes}
    rows.append(["privacy overhead (sum of stages)", *[fmt_s(totals[p]) for p in sizes],
                 *[f"{100 * totals[p] / forward_s:.1f}%" for p in sizes]])
    print_table(["stage (participant 1)", *[f"P={p}" for p in sizes],
                 *[f"% fwd P={p}" for p in sizes]], rows,
                title=f"Table 1. One vector round, {args.demos} demonstrations, vector of "
                      f"{length:,} values (median of {max(1, args.repeats)})")
    rows = [[f"P={p}", fmt_s(totals[p]), fmt_s(forward_s), f"{totals[p] / forward_s:.3f}",
             "yes" if totals[p] / forward_s <= 0.10 else "NO",
             f"{totals[p] / (forward_s + reference_s):.3f}"] for p in sizes]
    print_table(["federation", "privacy overhead", "forward", "overhead/forward",
                 "<= 0.10 ?", "overhead/(forward + public ref)"], rows,
                title="Table 2. Ratio privacy overhead / forward passes (target <= 0.10)")
    ceremony_rows = [[stage, *[fmt_s(ceremonies[p].get(stage, float("nan"))) for p in sizes]]
                     for stage in ceremonies[sizes[-1]]]
    print_table(["one-time costs", *[f"P={p}" for p in sizes]], [
        ["model load", *[fmt_s(load_s) for _ in sizes]],
        ["public reference (forward over public text)", *[fmt_s(reference_s) for _ in sizes]],
        *[[f"key ceremony: {r[0]}", *r[1:]] for r in ceremony_rows],
    ], title="Table 3. Once per task / per federation (not in the ratio)")
    print(f"forward = {args.demos} demonstrations in batches of {args.batch_size}, median of "
          f"{len(forward_times)} ({', '.join(fmt_s(x) for x in forward_times)}), "
          "after a warm-up batch.")
    print(f"\nfinished in {time.perf_counter() - start_all:.1f} s")
    print_footer()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
