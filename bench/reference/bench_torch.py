"""The PyTorch side of `duat bench`: the Para-Former and the serial ViT as PyTorch users write them.

Variants (each times the same function duat computes, docs/design.md):
  eager    one nn.Module per branch (LayerNorm, nn.Linear q/k/v and projection,
           F.scaled_dot_product_attention, nn.Linear MLP with GELU), a stage summing its branches
           in a Python loop; with one branch per stage this is timm's Block, so the serial ViT rows
           are the ViT as timm writes it
  einsum   a stage's branches batched over a branch axis with einsum (paraformer_torch.py)
  compile  torch.compile of `eager` (inductor, compiled on first use and cached by inductor)
  +bf16    any of the above under torch.autocast('cpu', dtype=torch.bfloat16)

    python bench/reference/bench_torch.py bench --config '{"dim":192,...}' --variant eager --mode train
    python bench/reference/bench_torch.py onnx --config '{...}' --out model.onnx
    python bench/reference/bench_torch.py logits --model m.safetensors --input x.safetensors
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paraformer_torch import config_kwargs, model_from_config, print_logits  # noqa: E402  (the einsum variant)


class Attention(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, cls_only=False):
        """cls_only: the class token's query alone (every token's keys and values): (B, 1, C)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).reshape(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        if cls_only:
            q = q[:, :, :1]
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, q.shape[2], C))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Branch(nn.Module):
    """One term of a stage: a + mlp(norm2(x + a)) with a = attn(norm1(x))."""

    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x, cls_only=False):
        """cls_only: the class token's term alone, (B, 1, C)."""
        a = self.attn(self.norm1(x), cls_only)
        return a + self.mlp(self.norm2((x[:, :1] if cls_only else x) + a))


class Block(Branch):
    """timm's ViT block: x + attn(norm1(x)), then + mlp(norm2(.)). The same function as a one-branch stage."""

    def forward(self, x, cls_only=False):
        x = (x[:, :1] if cls_only else x) + self.attn(self.norm1(x), cls_only)
        return x + self.mlp(self.norm2(x))


class Stage(nn.Module):
    def __init__(self, dim, heads, hidden, branches, scale):
        super().__init__()
        self.branches = nn.ModuleList([Branch(dim, heads, hidden) for _ in range(branches)])
        self.scale = scale

    def forward(self, x, cls_only=False):
        total = self.branches[0](x, cls_only)
        for b in self.branches[1:]:
            total = total + b(x, cls_only)
        return (x[:, :1] if cls_only else x) + self.scale * total


class ParaFormerEager(nn.Module):
    def __init__(self, image_size=28, patch_size=4, channels=1, classes=10, dim=192, heads=3, depth=1, branches=4,
                 mlp_ratio=4.0, combine="sum"):
        super().__init__()
        hidden = int(round(dim * mlp_ratio))
        tokens = (image_size // patch_size) ** 2 + 1
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens, dim))
        scale = 1.0 if combine == "sum" else 1.0 / branches
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) if branches == 1 else Stage(dim, heads, hidden, branches, scale)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, images):
        x = self.patch_embed(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        # In eval mode (inference, and the ONNX export) the last block computes the class token
        # alone, as duat's inference does (native/model/paraformer.h, model_forward).
        for i, blk in enumerate(self.blocks):
            x = blk(x, cls_only=not self.training and i == len(self.blocks) - 1)
        return self.head(self.norm(x)[:, 0])

    def load_stacked(self, params):
        """Takes duat's parameters (stacked over branches, docs/design.md) into the per-branch modules."""
        own = dict(self.named_parameters())
        with torch.no_grad():
            own["patch_embed.weight"].copy_(params["patch_embed.proj.weight"])
            own["patch_embed.bias"].copy_(params["patch_embed.proj.bias"])
            for name in ("cls_token", "pos_embed", "norm.weight", "norm.bias", "head.weight", "head.bias"):
                own[name].copy_(params[name])
            for s, stage in enumerate(self.blocks):
                for b, branch in enumerate([stage] if isinstance(stage, Block) else stage.branches):
                    for mod in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                        for kind in ("weight", "bias"):
                            own_name = f"{mod}.{kind}"
                            target = dict(branch.named_parameters())[own_name]
                            target.copy_(params[f"stages.{s}.{own_name}"][b])


def build(cfg, variant):
    """(model, autocast dtype or None) for a variant name such as 'eager', 'einsum', 'compile+bf16'."""
    base, _, precision = variant.partition("+")
    if base == "einsum":
        model = model_from_config(cfg)
    elif base in ("eager", "compile"):
        model = ParaFormerEager(**config_kwargs(cfg))
    else:
        raise SystemExit(f"unknown variant {variant!r}")
    if base == "compile":
        model = torch.compile(model)
    if precision not in ("", "bf16"):
        raise SystemExit(f"unknown precision in {variant!r}")
    return model, (torch.bfloat16 if precision == "bf16" else None)


def timed(fn, reps, warmup, warmup_seconds):
    # Warm-up: at least `warmup` runs and `warmup_seconds` (lib/bench/timing.ts does the same).
    start, runs = time.perf_counter(), 0
    while runs < warmup or time.perf_counter() - start < warmup_seconds:
        fn()
        runs += 1
    t = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return {"median_ms": 1e3 * statistics.median(t), "min_ms": 1e3 * min(t), "max_ms": 1e3 * max(t)}


def bench_cmd(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = json.loads(args.config)
    model, amp = build(cfg, args.variant)
    size, ch, batch = cfg["imageSize"], cfg["channels"], args.batch

    def autocast():
        return torch.autocast("cpu", dtype=amp) if amp else torch.autocast("cpu", enabled=False)

    out = {"framework": f"pytorch {torch.__version__}", "variant": args.variant, "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    if args.mode == "infer":
        model.eval()
        for b in (1, batch):
            x = torch.randn(b, ch, size, size)

            def run():
                with torch.inference_mode(), autocast():
                    model(x)
            out[f"infer_b{b}"] = timed(run, args.reps, args.warmup, args.warmup_seconds)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        x = torch.randn(batch, ch, size, size)
        y = torch.randint(0, cfg["classes"], (batch,))

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        out[f"train_b{batch}"] = timed(step, args.reps, args.warmup, args.warmup_seconds)
    out["seconds"] = time.perf_counter() - t0
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def onnx_cmd(args):
    """Exports the eager model (batch axis dynamic) for onnxruntime, the inference reference."""
    torch.manual_seed(0)
    cfg = json.loads(args.config)
    model = ParaFormerEager(**config_kwargs(cfg)).eval()
    x = torch.randn(1, cfg["channels"], cfg["imageSize"], cfg["imageSize"])
    torch.onnx.export(model, (x,), args.out, input_names=["images"], output_names=["logits"],
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17, dynamo=False)
    print(json.dumps({"onnx": args.out, "torch": torch.__version__}))


def logits_cmd(args):
    """Logits of a duat-saved model, computed by the eager (per-branch module) variant."""
    def build(cfg, params):
        model = ParaFormerEager(**config_kwargs(cfg))
        model.load_stacked(params)
        return model
    print_logits(args, build)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["bench", "onnx", "logits"])
    ap.add_argument("--config")
    ap.add_argument("--variant", default="eager")
    ap.add_argument("--mode", choices=["infer", "train"], default="infer")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--warmup-seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    ap.add_argument("--model")
    ap.add_argument("--input")
    args = ap.parse_args()
    {"bench": bench_cmd, "onnx": onnx_cmd, "logits": logits_cmd}[args.command](args)
