/**
 * End to end through the public API only: small models fit a seeded synthetic task (memorising
 * 256 random labels), and a training step inside tidy() leaks nothing over 1,000 iterations.
 */
import * as duat from '../lib';
import { live, rng } from './helpers/gradcheck';

const { F, nn, optim } = duat;
const N = 256, CLASSES = 10;

function randomLabels(seed: number): Int32Array {
  const next = rng(seed);
  return Int32Array.from({ length: N }, () => Math.floor(next() * CLASSES));
}

class MLP extends nn.Module {
  fc1: duat.nn.Linear;
  fc2: duat.nn.Linear;
  constructor(inDim: number, hidden: number, out: number) {
    super();
    this.fc1 = this.registerModule('fc1', new nn.Linear(inDim, hidden, { seed: 1 }));
    this.fc2 = this.registerModule('fc2', new nn.Linear(hidden, out, { seed: 2 }));
  }
  forward(x: duat.Tensor): duat.Tensor {
    return this.fc2.forward(F.gelu(this.fc1.forward(x)));
  }
}

/** One pre-norm Transformer block (attention + MLP), mean-pooled, then a linear head. */
class AttentionModel extends nn.Module {
  norm1 = this.registerModule('norm1', new nn.LayerNorm(32));
  qkv = this.registerModule('qkv', new nn.Linear(32, 96, { seed: 3 }));
  proj = this.registerModule('proj', new nn.Linear(32, 32, { seed: 4 }));
  norm2 = this.registerModule('norm2', new nn.LayerNorm(32));
  mlp = this.registerModule('mlp', new MLP(32, 64, 32));
  head = this.registerModule('head', new nn.Linear(32, CLASSES, { seed: 5 }));
  forward(x: duat.Tensor): duat.Tensor {
    const a = x.add(this.proj.forward(F.attention(this.qkv.forward(this.norm1.forward(x)), 4)));
    const y = a.add(this.mlp.forward(this.norm2.forward(a)));
    return this.head.forward(y.mean(1));
  }
}

function fit(model: { forward(x: duat.Tensor): duat.Tensor; parameters(): duat.Tensor[] }, x: duat.Tensor, y: Int32Array, lr: number): number[] {
  const opt = new optim.AdamW(model.parameters(), { lr, weightDecay: 0 });
  const losses: number[] = [];
  for (let step = 0; step < 300; step++) {
    const loss = duat.tidy(() => {
      const l = F.crossEntropy(model.forward(x), y);
      l.backward();
      opt.step();
      opt.zeroGrad();
      return l.item();
    });
    losses.push(loss);
    if (loss < 0.05) break;
  }
  opt.dispose();
  return losses;
}

describe('fitting a seeded synthetic task through the public API', () => {
  test('a 2-layer MLP memorises 256 random labels to loss < 0.05 within 300 steps', () => {
    const x = duat.randn([N, 32], { seed: 11 });
    const model = new MLP(32, 128, CLASSES);
    const losses = fit(model, x, randomLabels(1), 1e-2);
    expect(losses[0]).toBeGreaterThan(2);  // starts near ln(10)
    expect(losses[losses.length - 1]).toBeLessThan(0.05);
    expect(losses.length).toBeLessThanOrEqual(300);
    model.dispose();
    x.dispose();
  });

  test('a one-block attention model memorises 256 random labels to loss < 0.05 within 300 steps', () => {
    const x = duat.randn([N, 8, 32], { seed: 12 });
    const model = new AttentionModel();
    const losses = fit(model, x, randomLabels(2), 3e-3);
    expect(losses[0]).toBeGreaterThan(2);
    expect(losses[losses.length - 1]).toBeLessThan(0.05);
    model.dispose();
    x.dispose();
  });
});

describe('memory', () => {
  test('memory() is back where it started after 1,000 training steps inside tidy', () => {
    const model = new AttentionModel();
    const x = duat.randn([16, 4, 32], { seed: 13 });
    const y = Int32Array.from({ length: 16 }, (_, i) => i % CLASSES);
    const opt = new optim.AdamW(model.parameters(), { lr: 1e-3 });
    const step = () =>
      duat.tidy(() => {
        const loss = F.crossEntropy(model.forward(x), y, { labelSmoothing: 0.1 });
        loss.backward();
        optim.clipGradNorm(model.parameters(), 1.0);
        opt.step();
        opt.zeroGrad();
      });
    step();  // creates the optimiser state
    const before = live();
    for (let i = 0; i < 1000; i++) step();
    expect(live()).toEqual(before);
    opt.dispose();
    model.dispose();
    x.dispose();
  });

  test('tidy keeps what it returns and frees the rest; noGrad records nothing', () => {
    const before = live();
    const kept = duat.tidy(() => {
      const a = duat.ones([3]);
      a.mul(2);
      return { out: a.add(1) };
    });
    expect(Array.from(kept.out.toArray())).toEqual([2, 2, 2]);
    kept.out.dispose();
    expect(live()).toEqual(before);
    const p = duat.ones([2], { requiresGrad: true });
    const q = duat.noGrad(() => p.mul(3));
    expect(q.requiresGrad).toBe(false);
    p.dispose();
    q.dispose();
  });

  test('tidy frees everything its function made when the function throws', () => {
    const before = live();
    expect(() =>
      duat.tidy(() => {
        const a = duat.ones([1000]);
        a.mul(2).add(a);
        duat.ones([2, 3]).matmul(duat.ones([2, 3]));  // a ShapeError after four tensors were made
      }),
    ).toThrow(duat.ShapeError);
    expect(live()).toEqual(before);
  });
});

describe('optimisers match their definitions', () => {
  test('AdamW and SGD (Nesterov) one step against hand-computed updates', () => {
    duat.tidy(() => {
      const p = duat.tensor([1, -2], [2], { requiresGrad: true });
      p.mul(p).sum().backward();  // grad = 2p = [2, -4]
      const adam = new optim.AdamW([p], { lr: 0.1, weightDecay: 0.5, eps: 1e-8 });
      adam.step();
      // m = 0.1 g, v = 0.001 g^2; corrected m/sqrt(v) = sign(g); p <- p (1 - lr wd) - lr sign(g)
      const a = p.toArray();
      expect(a[0]).toBeCloseTo(1 * 0.95 - 0.1, 5);
      expect(a[1]).toBeCloseTo(-2 * 0.95 + 0.1, 5);
      adam.dispose();

      const q = duat.tensor([1, -2], [2], { requiresGrad: true });
      const sgd = new optim.SGD([q], { lr: 0.1, momentum: 0.9, nesterov: true });
      q.mul(q).sum().backward();
      sgd.step();  // buf = g; d = g + 0.9 g = 1.9 g
      expect(Array.from(q.toArray()).map((v) => +v.toFixed(5))).toEqual([1 - 0.38, -2 + 0.76]);
      sgd.dispose();
    });
  });

  test('clipGradNorm scales to the max norm and returns the norm before', () => {
    duat.tidy(() => {
      const p = duat.tensor([3, 4], [2], { requiresGrad: true });
      p.mul(p).sum().mul(0.5).backward();  // grad = p, norm 5
      expect(optim.clipGradNorm([p], 1)).toBeCloseTo(5, 5);
      const g = p.grad!.toArray();
      expect(Math.hypot(g[0], g[1])).toBeCloseTo(1, 4);
    });
  });
});

describe('the CPU block cache', () => {
  test('a repeated step reuses cached blocks; emptyCache and setCacheLimit release them', () => {
    const step = () => duat.tidy(() => duat.randn([256, 256], { seed: 1 }).matmul(duat.randn([256, 256], { seed: 2 })).sum().item());
    step();
    const before = duat.cacheInfo();
    step();
    const after = duat.cacheInfo();
    expect(after.hits).toBeGreaterThan(before.hits);
    expect(after.misses).toBe(before.misses);
    expect(after.cachedBytes).toBeGreaterThan(0);
    duat.emptyCache();
    expect(duat.cacheInfo().cachedBytes).toBe(0);
    duat.setCacheLimit(0);
    step();
    expect(duat.cacheInfo().cachedBytes).toBe(0);
    duat.setCacheLimit('auto');
    expect(() => duat.setCacheLimit(-1)).toThrow(duat.ArgumentError);
    expect(() => duat.setCacheLimit('some' as unknown as number)).toThrow(duat.ArgumentError);
  });

  test('turns over to new sizes when the program changes: a full cache gives way to the blocks just freed', () => {
    // Three blocks of 1 MiB fill a 3 MiB cache; then a step of 700 x 700 matrices (1.96 MB, too big
    // for those blocks). Had the cache kept its old blocks, the new ones would be freed at every
    // step and never reused.
    const step = (n: number) => () =>
      duat.tidy(() => duat.randn([n, n], { seed: 1 }).matmul(duat.randn([n, n], { seed: 2 })).sum().item());
    try {
      duat.setCacheLimit(3 * 2 ** 20);
      step(512)();
      step(512)();
      expect(duat.cacheInfo().cachedBytes).toBe(3 * 2 ** 20);
      step(700)();
      const before = duat.cacheInfo();
      step(700)();
      expect(duat.cacheInfo().hits).toBeGreaterThan(before.hits);
      expect(duat.cacheInfo().cachedBytes).toBeLessThanOrEqual(3 * 2 ** 20);
    } finally {
      duat.setCacheLimit('auto');
    }
  });

  test('by default the limit grows to what the program has had in use at once, so a step larger than 1 GiB reuses its blocks', () => {
    // 40 tensors of 32 MiB held at once, then freed and made again: under the fixed 1 GiB limit some of them are freed for good and made afresh
    // (misses); under the default every one comes back from the cache.
    const round = () => {
      const ts = Array.from({ length: 40 }, () => duat.zeros([8 * 2 ** 20]));
      for (const t of ts) t.dispose();
    };
    try {
      duat.setCacheLimit(2 ** 30);
      round();
      let before = duat.cacheInfo();
      round();
      expect(duat.cacheInfo().misses - before.misses).toBeGreaterThan(0);
      expect(duat.cacheInfo().limitBytes).toBe(2 ** 30);
      duat.setCacheLimit('auto');
      round();
      before = duat.cacheInfo();
      round();
      expect(duat.cacheInfo().misses - before.misses).toBe(0);
      expect(duat.cacheInfo().limitBytes).toBeGreaterThanOrEqual(40 * 32 * 2 ** 20);
      expect(duat.cacheInfo().cachedBytes).toBeGreaterThanOrEqual(40 * 32 * 2 ** 20);
    } finally {
      duat.setCacheLimit('auto');
    }
  });
});
