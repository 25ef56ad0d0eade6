"""PyTorch's forward latency for the same models as duat's GPU benchmark (native/tests/gpu_parity.cu).

Para-Former-1-n and a serial ViT of depth n (Para-Former-n-1), tiny width (dim 192, 3 heads,
MLP 768), 32x32x3 inputs, patch 4, on CUDA in eval mode without gradients; TF32 matrix products
unless --precision fp32. 'eager' runs the module; 'graph' replays it as a captured CUDA graph.
Median of --reps timings with CUDA events. Prints a Markdown table.

    python3 bench/reference/gpu_latency_torch.py --max-n 16 --reps 50
    python3 bench/reference/gpu_latency_torch.py --train --reps 30     (training steps, batch 64)
"""
import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from paraformer_torch import ParaFormer  # noqa: E402


def model(depth, branches):
    return ParaFormer(image_size=32, patch_size=4, channels=3, classes=10, dim=192, heads=3, depth=depth,
                      branches=branches, mlp_ratio=4.0).cuda().eval()


def timed(fn, reps):
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t = []
    for _ in range(reps):
        start.record()
        fn()
        end.record()
        end.synchronize()
        t.append(start.elapsed_time(end))
    return statistics.median(t)


@torch.no_grad()
def latency(m, batch, reps):
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    for _ in range(10):
        m(x)
    torch.cuda.synchronize()
    eager = timed(lambda: m(x), reps)
    g = torch.cuda.CUDAGraph()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            m(x)
    torch.cuda.current_stream().wait_stream(s)
    with torch.cuda.graph(g):
        m(x)
    for _ in range(5):
        g.replay()
    graph = timed(g.replay, reps)
    return eager, graph


def train_step_ms(m, batch, reps):
    """Median time of a full step (forward, cross-entropy, backward, AdamW), synchronised."""
    import time
    m.train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, 32, 32, device="cuda")
    y = torch.randint(0, 10, (batch,), device="cuda")

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(m(x), y).backward()
        opt.step()
        torch.cuda.synchronize()
    for _ in range(5):
        step()
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        step()
        t.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-n", type=int, default=16)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--precision", choices=["tf32", "fp32"], default="tf32")
    ap.add_argument("--train", action="store_true", help="training steps at batch 64 instead of forward latency")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.manual_seed(0)
    if args.train:
        print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}: training step at batch 64, "
              f"{args.precision} products, median of {args.reps} (ms) and images/s\n")
        print("| n | PF-1-n ms | PF-1-n img/s | ViT-n ms | ViT-n img/s |\n|---|---|---|---|---|")
        for n in (1, 2, 4, 8, 12):
            a, b = train_step_ms(model(1, n), 64, args.reps), train_step_ms(model(n, 1), 64, args.reps)
            print(f"| {n} | {a:.3f} | {64e3 / a:.0f} | {b:.3f} | {64e3 / b:.0f} |", flush=True)
        return
    batches = (1, 8, 64)
    print(f"PyTorch {torch.__version__} on {torch.cuda.get_device_name()}, {args.precision} products, "
          f"median of {args.reps} (ms)\n")
    head = "| n |" + "".join(f" {m} b{b} eager | {m} b{b} graph |" for b in batches for m in ("PF-1-n", "ViT-n"))
    print(head)
    print("|---|" + "---|" * (4 * len(batches)))
    rows = {}
    for n in range(1, args.max_n + 1):
        cells = []
        for b in batches:
            pf = latency(model(1, n), b, args.reps)
            vit = latency(model(n, 1), b, args.reps)
            rows[(n, b)] = (pf, vit)
            cells += [pf[0], pf[1], vit[0], vit[1]]
        print(f"| {n} |" + "".join(f" {c:.3f} |" for c in cells), flush=True)
    print("\nRatios to n = 1 (eager):\n\n| batch | PF-1-12 / PF-1-1 | ViT-12 / ViT-1 |\n|---|---|---|")
    for b in batches:
        if (12, b) in rows:
            print(f"| {b} | {rows[(12, b)][0][0] / rows[(1, b)][0][0]:.2f}x | {rows[(12, b)][1][0] / rows[(1, b)][1][0]:.2f}x |")


if __name__ == "__main__":
    main()
