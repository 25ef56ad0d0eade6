/**
 * fit()'s distributed training (docs/design.md, "Distributed training"): moving models,
 * optimizer state and metrics between the ranks of the job. 'data' keeps the whole model on
 * every rank and shards each batch; 'branches' gives every rank a share of each stage's branches
 * (ParaFormer.shardOf) and every rank the whole batch. Checkpoints hold the whole model in either
 * mode, the same file one process writes.
 */
import * as distributed from '../distributed';
import { ArgumentError } from '../errors';
import { BranchShard, isBranchParameter, ParaFormer } from '../nn/ParaFormer';
import { AdamW, SGD } from '../optim/optimizers';
import { Tensor, tensor } from '../tensor';

export type ParallelMode = 'none' | 'data' | 'branches';

/** The whole branch-stacked tensor, made on every rank from every rank's share of it (a collective). */
export function gatherBranches(part: Tensor, shard: BranchShard): Tensor {
  const [, ...rest] = part.shape;
  const inner = rest.reduce((a, b) => a * b, 1);
  const whole = new Float32Array(shard.total * inner);
  whole.set(part.toArray(), shard.offset * inner);
  distributed.allreduce(whole);
  return tensor(whole, [shard.total, ...rest]);
}

/** Every rank's parameters become rank 0's (data-parallel ranks start from one model). */
export function broadcastParameters(model: ParaFormer): void {
  for (const p of model.parameters()) {
    const values = distributed.broadcast(p.toArray(), 0);
    const t = tensor(values, p.shape);
    try {
      p.copy_(t);
    } finally {
      t.dispose();
    }
  }
}

/**
 * Moves `opt`'s state for `whole`'s parameters to `partOpt`'s for `part`'s (the same names, branch
 * parameters cut to the share). Called on every rank after a resume, before branch-parallel training.
 */
export function shareOptimizerState(whole: ParaFormer, opt: AdamW | SGD, part: ParaFormer, partOpt: AdamW | SGD): void {
  const shard = part.shard!;
  const cut = (t: Tensor, name: string) => (isBranchParameter(name) ? t.slice(0, shard.offset, shard.offset + part.config.branches) : t);
  const wholeParams = new Map(whole.namedParameters());
  partOpt.stepCount = opt.stepCount;
  for (const [name, p] of part.namedParameters()) {
    const q = wholeParams.get(name)!;
    const owned: Tensor[] = [];
    try {
      if (opt instanceof AdamW && partOpt instanceof AdamW) {
        const s = opt.stateFor(q);
        if (!s) continue;
        owned.push(s.m, s.v);
        const m = cut(s.m, name), v = cut(s.v, name);
        if (m !== s.m) owned.push(m, v);
        partOpt.restoreState(p, m, v, s.step);
      } else if (opt instanceof SGD && partOpt instanceof SGD) {
        const b = opt.bufferFor(q);
        if (!b) continue;
        owned.push(b);
        const c = cut(b, name);
        if (c !== b) owned.push(c);
        partOpt.restoreBuffer(p, c);
      } else {
        throw new ArgumentError('shareOptimizerState: the two optimizers are of different kinds');
      }
    } finally {
      for (const t of owned) t.dispose();
    }
  }
}

/**
 * The whole model's training state from a branch-parallel share: `entries` of the share
 * (parameters and optimizer state by name) with every branch-stacked tensor gathered from all
 * ranks (a collective). The tensors returned are new; the caller disposes them.
 */
export function gatherEntries(entries: [string, Tensor][], shard: BranchShard): [string, Tensor][] {
  return entries.map(([name, t]) => {
    const param = name.startsWith('optimizer.') ? name.slice(name.indexOf('.', 'optimizer.'.length) + 1) : name;
    return [name, isBranchParameter(param) ? gatherBranches(t, shard) : t.clone()];
  });
}

/** Copies every rank's share back into the whole model, on every rank (a collective). */
export function gatherInto(whole: ParaFormer, part: ParaFormer): void {
  const gathered = gatherEntries(part.namedParameters(), part.shard!);
  try {
    whole.loadStateDict(new Map(gathered));
  } finally {
    for (const [, t] of gathered) t.dispose();
  }
}

/** Sums per-rank evaluation totals over the job: [lossSum, correct, ...confusion]. */
export function sumOverRanks(values: number[]): number[] {
  return Array.from(distributed.allreduce(Float64Array.from(values)));
}
