"""How close to the FMA peak a training step could come on this machine if its products ran as fast as
PyTorch's (MKL's) do: every product of a `bench-profile.js` profile timed with torch.mm, at the same
shapes and layouts, and the step's time rebuilt from those rates.

    node scripts/bench-profile.js --layers 4,12 --out /tmp/prof
    python bench/reference/mkl_ceiling.py --profile /tmp/prof/cpu-profile.json --out bench/results/cpu-ceiling.md

A product label of the profile (native/core/profile.cpp) is `MxNxK`, ` (xB)` for B products of that
shape, ` A^T` where A is stored K x M, ` B` where op(B) is stored K x N (else N x K, a weight as
nn.Linear keeps it). The epilogues duat fuses into a product (bias, GELU, the stage sum) are not
done here: MKL's rates are those of the bare products, so the rebuilt step is, if anything, faster
than a step with MKL's products could be.

Each product is timed two ways, the median of rounds of 10 calls after warm-up calls, on the profile's
thread count: "hot", the same operands every call (they stay in L2 where they fit); "cold", operand
sets rotated so that each call reads operands that are not in L2 (at least 64 MiB of them), as
operands come from a step's earlier ops.
"""
import argparse
import json
import re
import statistics
import time

import torch

LABEL = re.compile(r"^(\d+)x(\d+)x(\d+)(?: \(x(\d+)\))?( A\^T)?( B)?")


def parse(label):
    m = LABEL.match(label)
    if not m:
        raise ValueError(f"not a product label: {label!r}")
    M, N, K = int(m.group(1)), int(m.group(2)), int(m.group(3))
    return M, N, K, int(m.group(4) or 1), bool(m.group(5)), bool(m.group(6))


def operands(M, N, K, batch, a_t, b_row):
    """One set: batch products' A and B views (op(A) M x K, op(B) K x N) and outputs."""
    out = []
    for _ in range(batch):
        a = torch.randn(K, M).t() if a_t else torch.randn(M, K)
        b = torch.randn(K, N) if b_row else torch.randn(N, K).t()
        out.append((a, b, torch.empty(M, N)))
    return out


def time_product(shape, cold, rounds):
    M, N, K, batch, a_t, b_row = shape
    set_bytes = 4 * batch * (M * K + K * N + M * N)
    n_sets = max(2, -(-(64 << 20) // set_bytes)) if cold else 1
    sets = [operands(*shape) for _ in range(n_sets)]
    i = 0

    def call():
        nonlocal i
        for a, b, c in sets[i % n_sets]:
            torch.mm(a, b, out=c)
        i += 1

    for _ in range(max(5, n_sets)):
        call()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(10):
            call()
        times.append((time.perf_counter() - t0) / 10)
    return 2.0 * M * N * K * batch / statistics.median(times) / 1e9


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--profile", required=True, help="cpu-profile.json from scripts/bench-profile.js")
    ap.add_argument("--out", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    prof = json.load(open(args.profile))
    threads, steps = prof["threads"], prof["steps"]
    peak = prof["peak"]["fp32"]
    torch.set_num_threads(threads)
    cases = [c for c in prof["cases"] if c["mode"] == "train" and c["batch"] == 64]
    rates = {}
    for c in cases:
        for p in c["report"]["products"]:
            label = p["shape"]
            shape = parse(label)
            if shape not in rates:
                rates[shape] = (time_product(shape, False, args.rounds), time_product(shape, True, args.rounds))

    lines = [
        "# The products' ceiling: a training step rebuilt with MKL's product rates",
        "",
        f"Commands: `node scripts/bench-profile.js --layers 4,12 --out DIR` (commit {prof['commit']}), then",
        "`python bench/reference/mkl_ceiling.py --profile DIR/cpu-profile.json --out bench/results/cpu-ceiling.md`",
        f"(bench/reference/mkl_ceiling.py; PyTorch {torch.__version__}, whose float32 products are MKL's and oneDNN's),",
        f"{threads} threads. Peak: {peak:.0f} GFLOP/s float32, measured by the profile run (`duat.cpuPeak()`).",
        "",
        "Every product of a float32 training step at batch 64 (the profile's shapes and layouts) timed with",
        "`torch.mm`, bare (duat's products also do their fused bias, GELU and stage-sum epilogues, which",
        "MKL's times here leave out), \"hot\" (the same operands every call) and \"cold\" (operands rotated",
        "through 64 MiB or more, as a step's products read what earlier ops wrote). A step rebuilt with",
        "MKL's rates: every product at that rate, the rest of the step (attention, norms, element-wise,",
        "optimizer, outside kernels) as duat measured it, or taking no time at all.",
        "",
        "| model | step GFLOP | duat step ms (of peak) | duat products GFLOP/s in the step | MKL cold | MKL hot "
        "| step with MKL's cold products (of peak) | with MKL's hot products | hot products and nothing else |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    detail = []
    for c in cases:
        r = c["report"]
        step = r["seconds"] / steps
        prods = r["products"]
        p_flops = sum(p["flops"] for p in prods) / steps
        p_secs = sum(p["seconds"] for p in prods) / steps
        rest = step - p_secs

        def rebuilt(which):
            return sum(p["flops"] / steps / (rates[parse(p["shape"])][which] * 1e9) for p in prods)

        cold, hot = rebuilt(1), rebuilt(0)
        f = c["flops"] / 1e9

        def eff(t):
            return f"{1e3 * t:.1f} ms ({f / t / peak:.0%})"

        lines.append(
            f"| {c['name']} | {f:.1f} | {eff(step)} | {p_flops / p_secs / 1e9:.0f} | {p_flops / cold / 1e9:.0f} | "
            f"{p_flops / hot / 1e9:.0f} | {eff(cold + rest)} | {eff(hot + rest)} | {eff(hot)} |"
        )
        detail.append(f"\n### {c['name']}\n")
        detail.append("| product (M x N x K) | duat in the step GFLOP/s (of peak) | MKL cold | MKL hot |")
        detail.append("|---|---|---|---|")
        for p in sorted(prods, key=lambda p: -p["seconds"]):
            h, co = rates[parse(p["shape"])]
            detail.append(f"| {p['shape']} | {p['gflops']:.0f} ({p['gflops'] / peak:.0%}) | {co:.0f} ({co / peak:.0%}) | {h:.0f} ({h / peak:.0%}) |")
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines + detail) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
