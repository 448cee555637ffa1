"""Host cost of the injection hooks, where a forward pass is bound by the host, not arithmetic.

Run: ``.venv/bin/python benchmarks/hook_overhead.py [--quick] [--device cuda]``.

On a GPU at batch 1 the default model (SmolLM2-135M) is bound by launching kernels: what the
injected query costs over zero-shot is the host work of its 2L hooks (docs/benchmarks.md,
``inference_latency.py`` on an H200). This script measures that work without a GPU: a random
Llama with the default model's depth (30 layers) and a tiny width (64), so that the forward
pass is Python dispatch and kernel launches, as on the GPU. Four conditions on the same
sites and prompt (batch 1, 26 tokens, the last token's logits only, ``inference_mode``):

* zero-shot: no hooks;
* no-op hooks: a forward hook returning ``None`` on each of the 2L sites, the floor of any
  hook-based injection (PyTorch's hook dispatch alone);
* fedctx: ``participant.hooks.inject_context`` with a ``[2, L, d]`` vector and ``[L, 4]``
  coefficients (its inference path: constants built once, one fused kernel per site);
* folded: ``participant.folding.fold_context`` on a copy of the model, the same vector and
  coefficients merged into the output projections (no hook; what ``fedctx infer`` runs on a CPU).

The conditions alternate in blocks of ``--block-size`` forward passes (so load drift hits
all alike); reported: the median forward time, its ratio to zero-shot, and the extra time
per hooked site. The ratio here bounds what the hooks add to a host-bound forward pass; it
is not a GPU measurement (``--device cuda`` makes it one, synchronising after each pass).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from _common import median, print_footer, print_header, print_table, set_torch_threads
from participant.folding import fold_context
from participant.hooks import default_coefficients, inject_context
from participant.layers import LayerSites, resolve_layer_sites


@contextmanager
def noop_hooks(sites: LayerSites) -> Iterator[None]:
    """A forward hook that changes nothing on every site (removed on exit)."""
    with ExitStack() as stack:
        for modules in (sites.attn, sites.mlp):
            for module in modules:
                stack.callback(module.register_forward_hook(lambda *_: None).remove)
        yield


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, time the four conditions, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 blocks instead of 80")
    parser.add_argument("--layers", type=int, default=30, help="decoder layers (SmolLM2-135M: 30)")
    parser.add_argument("--hidden", type=int, default=64, help="residual width")
    parser.add_argument("--tokens", type=int, default=26, help="prompt length (sst2 mean: 26)")
    parser.add_argument("--blocks", type=int, default=80)
    parser.add_argument("--block-size", type=int, default=10, help="forward passes per block")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    blocks = 10 if args.quick else args.blocks
    set_torch_threads(args.threads)
    print_header("hook overhead on a host-bound forward pass", quick=args.quick)

    config = LlamaConfig(vocab_size=512, hidden_size=args.hidden,
                         intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=max(128, args.tokens))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().to(args.device)
    sites = resolve_layer_sites(model)
    vector = torch.randn(2, args.layers, args.hidden)
    coefficients = default_coefficients(args.layers)
    ids = torch.randint(0, config.vocab_size, (1, args.tokens), device=args.device)
    cuda = torch.device(args.device).type == "cuda"

    folded = copy.deepcopy(model)
    fold_context(folded, resolve_layer_sites(folded), vector=vector, coefficients=coefficients)

    def forward(network: torch.nn.Module) -> float:
        with torch.inference_mode():
            start = time.perf_counter()
            network(input_ids=ids, logits_to_keep=1)
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter() - start

    conditions: dict[str, tuple[torch.nn.Module, Callable[[], AbstractContextManager[None]]]] = {
        "zero-shot": (model, nullcontext),
        "no-op hooks (floor)": (model, lambda: noop_hooks(sites)),
        "fedctx inject_context": (model, lambda: inject_context(
            model, sites, vector=vector, coefficients=coefficients)),
        "fedctx folded (no hooks)": (folded, nullcontext),
    }
    times: dict[str, list[float]] = {name: [] for name in conditions}
    for block in range(blocks + 1):  # block 0 warms every condition up, untimed
        for name, (network, condition) in conditions.items():
            with condition():
                passes = [forward(network) for _ in range(args.block_size)]
            if block:
                times[name] += passes

    sites_hooked = 2 * args.layers
    zero = median(times["zero-shot"])
    rows = []
    for name, values in times.items():
        value = median(values)
        rows.append([name, f"{value * 1e3:.3f} ms", f"{value / zero:.3f}",
                     f"{(value - zero) / sites_hooked * 1e6:.1f} us"])
    print(f"random Llama, {args.layers} layers x {args.hidden} wide, batch 1, {args.tokens} "
          f"tokens, {args.device}; {blocks} blocks x {args.block_size} passes per condition")
    print_table(["condition", "median forward", "x zero-shot", f"extra per site ({sites_hooked})"],
                rows)
    print_footer()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
