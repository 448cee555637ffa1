"""Helpers shared by the benchmark scripts (not part of the fedctx package).

* :func:`print_header` / :func:`print_footer`: the exact command, the machine (CPU count,
  torch threads, load average), versions and the git commit, so a table can be reproduced;
* :func:`print_table`: aligned plain-text tables;
* :func:`validation_config` / :func:`injected_reading`: for analyses of finished experiment
  cells (refuse test-split configs; accuracy and label-word cross-entropy with a vector
  injected);
* :func:`rss_kib` / :func:`reset_peak_rss`: process memory from ``/proc/self/status``;
* :class:`LoopbackFederation`: a throwaway PKI, a real in-process ``CoordinatorServer`` on
  ``127.0.0.1:0`` with mutual TLS, one ``CoordinatorClient`` per participant and the real key
  ceremony over gRPC (announce, seal, publish, fetch, open), as ``tests/e2e`` does it;
* :class:`ByteCountingProxy`: a TCP relay that counts the bytes really sent on the wire
  (TLS records, HTTP/2 frames, protobuf), for the communication benchmark.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# $FEDCTX_DATA (as participant.data reads it) or the ../shared/data beside the checkout
SHARED_DATA = Path(os.environ.get("FEDCTX_DATA") or REPO.parent / "shared" / "data")


# --------------------------------------------------------------------------- reporting


def command_line() -> str:
    """The command that started this process, runnable from the repository root."""
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    exe = Path(argv[0])
    with contextlib.suppress(ValueError):
        argv[0] = str(Path(os.path.abspath(exe)).relative_to(Path.cwd()))
    return f"(cd {shlex.quote(os.getcwd())} && {shlex.join(argv)})"


def _versions(names: Sequence[str]) -> str:
    from importlib import metadata

    out = []
    for name in names:
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(out)


def _git() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit or 'unknown'}{' (+ uncommitted changes)' if dirty else ''}"


def machine_line(*, torch_threads: bool = True) -> str:
    """CPU count, usable CPUs, torch threads and load average."""
    cpus = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    parts = [f"{platform.machine()} {platform.processor() or ''}".strip(),
             f"os.cpu_count()={cpus}", f"usable CPUs={usable}"]
    if torch_threads:
        import torch

        parts.append(f"torch threads={torch.get_num_threads()} "
                     f"(interop {torch.get_num_interop_threads()})")
    load = os.getloadavg()
    parts.append(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return ", ".join(parts)


def print_header(title: str, *, quick: bool, torch_threads: bool = True,
                 extra: Sequence[str] = ()) -> None:
    """Title, exact command, machine, versions, git commit, date."""
    print(f"== {title} ==")
    print(f"command : {command_line()}")
    print(f"machine : {machine_line(torch_threads=torch_threads)}")
    mem = _meminfo_mib()
    if mem:
        print(f"memory  : {mem}")
    print(f"software: python {platform.python_version()}, "
          + _versions(["torch", "transformers", "tenseal", "grpcio", "opacus", "numpy"]))
    print(f"git     : {_git()}   date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    mode = "QUICK (small sizes: checks the script, figures not representative)" if quick else "full"
    print(f"mode    : {mode}")
    for line in extra:
        print(line)
    print()


def print_footer() -> None:
    """Warn when the machine was busy (timings then over-state costs)."""
    load = os.getloadavg()[0]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print()
    print(f"load average at end: {load:.2f} on {usable} usable CPUs", end="")
    if usable and load > usable + 0.5:  # a benchmark using every core alone reads ~usable
        print("  -> WARNING: the machine was busy; re-run on a quiet machine before quoting times")
    else:
        print()


def _meminfo_mib() -> str:
    try:
        info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
        total = int(info["MemTotal"].split()[0]) // 1024
        avail = int(info["MemAvailable"].split()[0]) // 1024
        return f"{total:,} MiB total, {avail:,} MiB available"
    except (OSError, KeyError, ValueError):
        return ""


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]], *,
                title: str = "", left: int = 1) -> None:
    """Aligned table; the first ``left`` columns are left-aligned, the others right-aligned."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def fmt(row: Sequence[str]) -> str:
        return "  ".join(
            (c.ljust(w) if i < left else c.rjust(w))
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()

    if title:
        print(title)
    print(fmt(list(headers)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(fmt(row))
    print()


def fmt_s(seconds: float) -> str:
    """Seconds with a unit that keeps 3 significant digits."""
    if math.isnan(seconds):
        return "n/a"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def fmt_bytes(n: float) -> str:
    """Bytes with thousands separators."""
    return f"{round(n):,}"


def median(values: Sequence[float]) -> float:
    """Median (NaN for an empty list)."""
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``(result, seconds)``."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def set_torch_threads(threads: int | None) -> None:
    """Set torch's intra-op threads when asked (0/None: leave torch's default)."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def quiet_transformers() -> None:
    """No weight-loading progress bars or advisory warnings in benchmark output."""
    with contextlib.suppress(Exception):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()


def validation_config(path: Path, *, allow_test_split: bool) -> Any:
    """The ``ExperimentConfig`` at ``path``, refused (``SystemExit``) when it scores the test
    split and ``allow_test_split`` is off: analyses that choose settings read validation
    queries only."""
    from fedctx.experiment import ExperimentConfig

    config = ExperimentConfig.from_toml(path)
    if config.evaluation_split != "validation" and not allow_test_split:
        raise SystemExit(f"{path} scores the {config.evaluation_split} split; "
                         "pass --allow-test-split to read it anyway")
    return config


def injected_reading(lm: Any, sites: Any, task: Any, texts: Sequence[str], labels: Any, *,
                     vector: Any, coefficients: Any) -> str:
    """``"accuracy % / label-word cross-entropy"`` of ``texts`` (labels ``[Q]``) with
    ``vector`` (``[2, L, d]``) injected at ``coefficients`` (``[L, 4]``)."""
    import torch

    from participant.evaluation import label_scores, score

    logits = label_scores(lm, sites, task, list(texts), vector=vector, coefficients=coefficients)
    scores = score(logits.argmax(-1).tolist(), labels.tolist(), num_classes=len(task.labels))
    loss = torch.nn.functional.cross_entropy(logits, labels).item()
    return f"{100 * scores.accuracy:.1f} / {loss:.3f}"


# --------------------------------------------------------------------------- memory


def rss_kib() -> dict[str, int]:
    """``{"VmRSS": kiB, "VmHWM": kiB}`` of this process."""
    out = {}
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, value = line.split(":", 1)
                out[key] = int(value.split()[0])
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def mib(kib: float) -> str:
    """kiB as MiB with one decimal."""
    return f"{kib / 1024:,.1f}"


# --------------------------------------------------------------------------- federation


@dataclass
class Ceremony:
    """Result of the key ceremony."""

    secret_context: Any  # tenseal.Context of the keyholder (holds the secret key)
    federation: Any  # pb.GetFederationResponse after publication
    opened: dict[str, bytes]  # participant id -> secret-context bytes it opened
    seconds: dict[str, float] = field(default_factory=dict)
    publish_path: str = "grpc"


class LoopbackFederation:
    """PKI + in-process coordinator on 127.0.0.1:0 (mutual TLS) + one client per participant.

    Args:
        participant_ids: the roster; the first one is the keyholder.
        workdir: where certificates and coordinator state go (a temporary folder if None).
        model_fingerprint / layer_map_fingerprint: bindings the keyholder publishes.
        via_port: connect clients to this port instead of the coordinator's (a proxy).
        **config: extra ``CoordinatorConfig`` fields (round_timeout_s, max_workers, ...).
    """

    def __init__(self, participant_ids: Sequence[str], *, workdir: Path | None = None,
                 federation_id: str = "bench", model_fingerprint: str = "m" * 64,
                 layer_map_fingerprint: str = "l" * 64, **config: Any) -> None:
        from coordinator.config import CoordinatorConfig
        from coordinator.server import CoordinatorServer
        from fedctx.provision import provision

        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="fedctx-bench-")
        self.workdir = Path(workdir or self._tmp.name)  # type: ignore[union-attr]
        self.ids = list(participant_ids)
        self.federation_id = federation_id
        self.model_fingerprint = model_fingerprint
        self.layer_map_fingerprint = layer_map_fingerprint
        start = time.perf_counter()
        self.pki = provision(self.workdir / "pki", self.ids)
        self.provision_seconds = time.perf_counter() - start
        self.config = CoordinatorConfig(
            federation_id=federation_id, roster=tuple(self.ids), keyholder_id=self.ids[0],
            state_dir=self.workdir / "coordinator", tls_cert=self.pki.coordinator_cert,
            tls_key=self.pki.coordinator_key, tls_ca=self.pki.ca_cert, **config,
        )
        self.server = CoordinatorServer(self.config).start()
        self.port = self.server.port
        self.client_port: int | None = None  # set to a proxy's port to route clients through it
        self.clients: dict[str, Any] = {}

    # -- clients ------------------------------------------------------------------------
    def client(self, pid: str, *, port: int | None = None, **kwargs: Any) -> Any:
        """A (cached) ``CoordinatorClient`` for ``pid`` with its own certificate and channel."""
        from participant.client import CoordinatorClient, TlsFiles

        if pid not in self.clients or port is not None:
            cert, key = self.pki.participants[pid]
            client = CoordinatorClient(f"127.0.0.1:{port or self.client_port or self.port}",
                                       TlsFiles(cert, key, self.pki.ca_cert), **kwargs)
            if port is not None:
                return client
            self.clients[pid] = client
        return self.clients[pid]

    # -- keys ---------------------------------------------------------------------------
    def key_ceremony(self, *, params: Any = None, open_for: Sequence[str] | None = None,
                     allow_in_process_publish: bool = False) -> Ceremony:
        """The real key ceremony over gRPC (as in ``Participant.establish_keys``).

        Every participant announces a signed X25519 key; the keyholder lists and verifies the
        announcements, creates the CKKS context, seals it to every other participant and
        publishes; each participant in ``open_for`` (default: all) fetches and opens its key.

        The secret context is encrypted once under a data key and only the 32-byte key is
        sealed per participant, so PublishKeys grows by ~300 bytes per participant.
        ``allow_in_process_publish`` is kept for compatibility and no longer needed.
        """

        from privacy import ckks, keyshare
        from proto.fedctx.v1 import fedctx_pb2 as pb

        fed, keyholder = self.federation_id, self.ids[0]
        seconds: dict[str, float] = {}
        x25519: dict[str, bytes] = {}
        start = time.perf_counter()
        for pid in self.ids:
            private, public = keyshare.generate_x25519_keypair()
            x25519[pid] = private
            cert, key = self.pki.participants[pid]
            self.client(pid).announce_key(pb.AnnounceKeyRequest(
                federation_id=fed, x25519_public=public,
                signature=keyshare.sign_key_announcement(
                    federation_id=fed, participant_id=pid, x25519_public=public,
                    signing_key_pem=key.read_bytes()),
                certificate_pem=cert.read_text()))
        seconds["announce (all participants)"] = time.perf_counter() - start

        start = time.perf_counter()
        holder = self.client(keyholder)
        holder_key = self.pki.participants[keyholder][1].read_bytes()
        ca = self.pki.ca_cert.read_bytes()
        announcements = [a for a in holder.key_announcements() if a.participant_id != keyholder]
        context = ckks.create_secret_context(params or ckks.CkksParams())
        public = ckks.serialize_public_context(context)
        fingerprint = ckks.context_fingerprint(public)
        secret = ckks.serialize_secret_context(context)
        data_key, encrypted = keyshare.encrypt_secret_context(
            secret, federation_id=fed, public_context_fingerprint=fingerprint)
        sealed = []
        for a in announcements:
            keyshare.verify_key_announcement(
                federation_id=fed, participant_id=a.participant_id, x25519_public=a.x25519_public,
                signature=a.signature, certificate_pem=a.certificate_pem.encode(),
                ca_certificate_pem=ca)
            sealed.append(pb.SealedKey(recipient_id=a.participant_id,
                                       sealed_secret_context=keyshare.seal(
                data_key, recipient_x25519_public=a.x25519_public, federation_id=fed,
                recipient_id=a.participant_id, public_context_fingerprint=fingerprint,
                sender_signing_key_pem=holder_key)))
        request = pb.PublishKeysRequest(
            federation_id=fed, public_context=public,
            ckks_params_fingerprint=(params or ckks.CkksParams()).fingerprint(),
            model_fingerprint=self.model_fingerprint,
            layer_map_fingerprint=self.layer_map_fingerprint, sealed_keys=sealed,
            encrypted_secret_context=encrypted)
        seconds["keyholder: verify + create + seal"] = time.perf_counter() - start
        start = time.perf_counter()
        publish_path = f"grpc ({request.ByteSize():,} bytes)"
        holder.publish_keys(request)
        seconds["publish"] = time.perf_counter() - start

        start = time.perf_counter()
        opened: dict[str, bytes] = {keyholder: secret}
        for pid in (open_for if open_for is not None else self.ids):
            if pid == keyholder:
                continue
            response = self.client(pid).fetch_sealed_key()
            opened_key = keyshare.open_sealed(
                response.sealed_secret_context, recipient_x25519_private=x25519[pid],
                federation_id=fed, recipient_id=pid,
                public_context_fingerprint=response.ckks_context_fingerprint,
                sender_certificate_pem=response.keyholder_certificate_pem.encode(),
                ca_certificate_pem=ca, sender_id=response.keyholder_id)
            opened[pid] = keyshare.decrypt_secret_context(
                response.encrypted_secret_context, data_key=opened_key, federation_id=fed,
                public_context_fingerprint=response.ckks_context_fingerprint)
            if opened[pid] != secret:
                raise AssertionError(f"{pid} opened a different secret context")
        seconds["fetch + open (per opening participant)"] = (
            (time.perf_counter() - start) / (len(opened) - 1) if len(opened) > 1 else float("nan"))
        return Ceremony(context, holder.federation(), opened, seconds, publish_path)

    def header(self, federation: Any, round_id: str, length: int,
               kind: str = "context_vector") -> Any:
        """A contribution header bound to this federation."""
        from proto.fedctx.v1 import fedctx_pb2 as pb

        return pb.ContributionHeader(
            federation_id=self.federation_id, round_id=round_id,
            model_fingerprint=self.model_fingerprint,
            layer_map_fingerprint=self.layer_map_fingerprint,
            ckks_context_fingerprint=federation.ckks_context_fingerprint,
            vector_length=length, kind=kind)

    def stop(self) -> None:
        """Close every client, stop the server, remove the temporary folder."""
        for client in list(self.clients.values()):
            with contextlib.suppress(Exception):
                client.close()
        self.server.stop(grace_s=0)
        if self._tmp is not None:
            self._tmp.cleanup()

    def __enter__(self) -> LoopbackFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def time_calls(obj: Any, name: str) -> Iterator[list[float]]:
    """Record the duration of every call of ``obj.name`` (instance attribute wrapper)."""
    original = getattr(obj, name)
    durations: list[float] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            durations.append(time.perf_counter() - start)

    setattr(obj, name, wrapper)
    try:
        yield durations
    finally:
        with contextlib.suppress(AttributeError):
            delattr(obj, name)


# --------------------------------------------------------------------------- wire bytes


class ByteCountingProxy:
    """TCP relay 127.0.0.1:port -> 127.0.0.1:target counting bytes in each direction."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.up = 0  # client -> server
        self.down = 0  # server -> client
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for src, dst, up in ((conn, upstream, True), (upstream, conn, False)):
                threading.Thread(target=self._pump, args=(src, dst, up), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def counters(self) -> tuple[int, int]:
        """``(bytes up, bytes down)`` so far."""
        with self._lock:
            return self.up, self.down

    def settle(self, *, quiet_s: float = 0.05, timeout_s: float = 2.0) -> tuple[int, int]:
        """Counters once no byte moved for ``quiet_s`` (lets in-flight frames land)."""
        deadline = time.monotonic() + timeout_s
        last = self.counters()
        while time.monotonic() < deadline:
            time.sleep(quiet_s)
            now = self.counters()
            if now == last:
                return now
            last = now
        return last

    def close(self) -> None:
        """Stop accepting connections."""
        self._closed = True
        with contextlib.suppress(OSError):
            self.sock.close()
