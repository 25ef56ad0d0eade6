/**
 * Compression by branch selection (the follow-up paper's use of additive branches): rank each
 * stage's branches by their contribution, keep the best k of every stage, and write a smaller
 * model that is a real Para-Former-m-k (smaller file, faster forward). Two rankings: 'norm', from
 * the weights alone (the Frobenius norms of a branch's two output projections, attn.proj and
 * mlp.fc2), and 'greedy', which measures: each round drops from every stage the branch whose
 * removal costs the least validation accuracy.
 */
import { ArgumentError } from '../errors';
import { Dataset } from '../data/dataset';
import { isBranchOutput, ParaFormer } from '../nn/ParaFormer';
import { noGrad, tensor, Tensor, tidy } from '../tensor';
import { checkInt, checkOneOf, checkOptions, describe } from '../validate';
import { evaluate } from './fit';

/** Options of {@link rankBranches} and {@link compress}. */
export interface RankOptions {
  /** 'norm' (weights only, no data) or 'greedy' (validation accuracy). Default 'greedy'. */
  method?: 'norm' | 'greedy';
  /** Evaluation batch size. Default 500. */
  batchSize?: number;
}

/** Frobenius norm of row `b` of a stacked (N, ...) parameter. */
function rowNorm(p: Tensor, b: number): number {
  return noGrad(() => tidy(() => Math.sqrt(p.slice(0, b, b + 1).mul(p.slice(0, b, b + 1)).sum().item())));
}

/**
 * Every stage's branches from the most to the least important. 'greedy' needs `val` and costs
 * about n^2 / 2 evaluations of it.
 */
export async function rankBranches(model: ParaFormer, val: Dataset | undefined, options?: RankOptions): Promise<number[][]> {
  if (!(model instanceof ParaFormer)) throw new ArgumentError(`Expected a ParaFormer for model but received ${describe(model)}`);
  const o = checkOptions<RankOptions>(options, 'rank options');
  const method = checkOneOf(o.method ?? 'greedy', 'method', ['norm', 'greedy'] as const);
  const batchSize = checkInt(o.batchSize ?? 500, 'batchSize', 1, 1 << 20);
  const { depth, branches } = model.config;
  const params = new Map(model.namedParameters());
  if (method === 'norm') {
    return Array.from({ length: depth }, (_, s) => {
      const score = (b: number) => rowNorm(params.get(`stages.${s}.attn.proj.weight`)!, b) + rowNorm(params.get(`stages.${s}.mlp.fc2.weight`)!, b);
      return Array.from({ length: branches }, (_, b) => b).sort((a, b) => score(b) - score(a));
    });
  }
  if (!val) throw new ArgumentError("method 'greedy' needs a validation set");
  // A branch is removed exactly by zeroing its two output projections (attn.proj and mlp.fc2,
  // weights and biases): then a_b = 0 and its MLP adds 0, so f_b = 0. The probe is one model of
  // the same size whose parameters are reloaded with the dropped branches zeroed. Each round
  // drops, from every stage, the branch whose removal (the other stages as they stand) leaves the
  // best accuracy; the order of removal, reversed, is the ranking.
  const probe = new ParaFormer({ ...model.config, device: model.device });
  try {
    const zeroedAccuracy = async (dead: Set<number>[]) => {
      tidy(() => {
        const sd = new Map(model.namedParameters());
        for (const [name, p] of model.namedParameters()) {
          const stage = Number(name.split('.')[1]);
          if (!isBranchOutput(name) || dead[stage].size === 0) continue;
          const mask = Float32Array.from({ length: branches }, (_, b) => (dead[stage].has(b) ? 0 : 1));
          sd.set(name, p.mul(tensor(mask, [branches, ...p.shape.slice(1).map(() => 1)], { device: model.device })));
        }
        probe.loadStateDict(sd);
      });
      return (await evaluate(probe, val, batchSize)).accuracy;
    };
    const dead = Array.from({ length: depth }, () => new Set<number>());
    const order: number[][] = Array.from({ length: depth }, () => []);
    for (let round = 0; round < branches - 1; round++) {
      const choice: number[] = [];
      for (let s = 0; s < depth; s++) {
        let best = -1, bestAcc = -Infinity;
        for (let b = 0; b < branches; b++) {
          if (dead[s].has(b)) continue;
          const trial = dead.map((d, t) => (t === s ? new Set([...d, b]) : d));
          const acc = await zeroedAccuracy(trial);
          if (acc > bestAcc) [best, bestAcc] = [b, acc];
        }
        choice.push(best);
      }
      choice.forEach((b, s) => {
        dead[s].add(b);
        order[s].push(b);
      });
    }
    return order.map((dropped, s) => [...Array.from({ length: branches }, (_, b) => b).filter((b) => !dead[s].has(b)), ...dropped.reverse()]);
  } finally {
    probe.dispose();
  }
}

/**
 * Keeps the `keep` most important branches of every stage (rankBranches) and returns the smaller
 * model with its validation accuracy, and the whole model's.
 */
export async function compress(model: ParaFormer, val: Dataset, keep: number, options?: RankOptions): Promise<{ model: ParaFormer; kept: number[][]; accuracy: number; before: number }> {
  const k = checkInt(keep, 'keep', 1, model.config.branches);
  const batchSize = checkInt(options?.batchSize ?? 500, 'batchSize', 1, 1 << 20);
  const ranking = await rankBranches(model, val, options);
  const kept = ranking.map((r) => r.slice(0, k).sort((a, b) => a - b));
  const small = model.selectBranches(kept);
  const [after, before] = [await evaluate(small, val, batchSize), await evaluate(model, val, batchSize)];
  return { model: small, kept, accuracy: after.accuracy, before: before.accuracy };
}
