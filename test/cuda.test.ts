/**
 * The model on device 'cuda' from Node. Everywhere: the device option's errors and 'auto'. With a
 * usable GPU (a CUDA build, `npm run test:gpu`): CUDA forward, training step, evaluation and the
 * host/device synchronisation against the CPU path on the same parameters. Without one the GPU
 * part is skipped with the reason printed; DUAT_REQUIRE_CUDA=1 turns the skip into a failure.
 */
import * as duat from '../lib';
import { native } from '../lib/native';

const cuda = duat.backendInfo().cuda;
const gpu = cuda.available ? describe : describe.skip;
if (!cuda.available) {
  if (process.env.DUAT_REQUIRE_CUDA === '1') throw new Error(`DUAT_REQUIRE_CUDA=1 but CUDA is unusable: ${cuda.reason}`);
  // eslint-disable-next-line no-console
  console.log(`CUDA suite skipped: ${cuda.reason}`);
}

const SMALL = { depth: 2, branches: 3, dim: 32, heads: 2, mlpRatio: 2, patchSize: 7, seed: 3 } as const;

function images(B: number, seed: number): duat.Tensor {
  return duat.randn([B, 1, 28, 28], { seed });
}

function labels(B: number, seed: number): Int32Array {
  return Int32Array.from({ length: B }, (_, i) => (i * 7 + seed) % 10);
}

/** ||a - b|| / ||b||. */
function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) return Infinity;
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

describe('device option', () => {
  test("'auto' picks CUDA exactly when it is usable", () => {
    const m = new duat.ParaFormer({ ...SMALL, device: 'auto' });
    expect(m.device).toBe(cuda.available ? 'cuda' : 'cpu');
    m.dispose();
  });

  test('bad devices and precisions are argument errors', () => {
    expect(() => new duat.ParaFormer({ ...SMALL, device: 'tpu' as 'cpu' })).toThrow(duat.ArgumentError);
    expect(() => new duat.ParaFormer({ ...SMALL, precision: 'fp16' as 'fp32' })).toThrow(/precision/);
    const m = new duat.ParaFormer(SMALL);
    expect(() => m.to('gpu' as 'cuda')).toThrow(duat.ArgumentError);
    m.dispose();
  });

  (cuda.available ? test.skip : test)("'cuda' without a usable GPU is a DeviceError that says why", () => {
    expect(() => new duat.ParaFormer({ ...SMALL, device: 'cuda' })).toThrow(duat.DeviceError);
    expect(() => new duat.ParaFormer({ ...SMALL, device: 'cuda' })).toThrow(cuda.reason);
    const m = new duat.ParaFormer(SMALL);
    expect(() => m.to('cuda')).toThrow(duat.DeviceError);
    expect(m.device).toBe('cpu');
    m.dispose();
  });
});

gpu('on a GPU', () => {
  test('forward matches the CPU on the same parameters (fp32 and tf32)', () => {
    for (const [precision, tol] of [['fp32', 1e-4], ['tf32', 1e-2]] as const) {
      const cpu = new duat.ParaFormer(SMALL);
      const gpuModel = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision });
      gpuModel.loadStateDict(cpu.stateDict());
      const x = images(5, 1);
      const a = duat.noGrad(() => cpu.forward(x)), b = gpuModel.forward(x);
      expect(b.shape).toEqual([5, 10]);
      expect(relErr(b.toArray(), a.toArray())).toBeLessThan(tol);
      for (const t of [x, a, b]) t.dispose();
      cpu.dispose();
      gpuModel.dispose();
    }
  });

  test('training steps match the CPU (AdamW with groups, smoothing, clipping), and the parameters sync back', async () => {
    const cpu = new duat.ParaFormer(SMALL);
    const dev = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    dev.loadStateDict(cpu.stateDict());
    const groups = (m: duat.ParaFormer) => {
      const noDecay = new Set(m.noDecayNames());
      const named = m.namedParameters();
      return new duat.optim.AdamW([
        { params: named.filter(([n]) => !noDecay.has(n)).map(([, p]) => p), options: { weightDecay: 0.05 } },
        { params: named.filter(([n]) => noDecay.has(n)).map(([, p]) => p), options: { weightDecay: 0, lr: 5e-3 } },
      ], { lr: 2e-3 });
    };
    const optCpu = groups(cpu), optDev = groups(dev);
    for (let step = 0; step < 3; step++) {
      const x = images(8, 10 + step), y = labels(8, step);
      const o = { labelSmoothing: 0.1, clipGradNorm: 0.5 };
      const a = await cpu.trainStep(x, y, { optimizer: optCpu, ...o });
      const b = await dev.trainStep(x, y, { optimizer: optDev, ...o });
      expect(Math.abs(b.loss - a.loss)).toBeLessThan(1e-4 * Math.max(1, a.loss));
      expect(Math.abs(b.gradNorm - a.gradNorm)).toBeLessThan(1e-3 * a.gradNorm);
      expect(b.correct).toBe(a.correct);
      x.dispose();
    }
    // Reading the parameters copies them back from the GPU.
    const pc = new Map(cpu.namedParameters()), pd = dev.namedParameters();
    for (const [name, p] of pd) {
      const a = p.toArray(), b = pc.get(name)!.toArray();
      if (name.endsWith('attn.qkv.bias')) {
        // The key part of the QKV bias has an exactly zero gradient (softmax ignores a shift), so
        // Adam turns each device's rounding noise into steps of up to lr: equal within 3 steps.
        expect(a.reduce((w, v, i) => Math.max(w, Math.abs(v - b[i])), 0)).toBeLessThan(3 * 5e-3 + 1e-5);
      } else {
        expect([name, relErr(a, b) < 1e-4]).toEqual([name, true]);
      }
    }
    // So do the optimizer's moments, for checkpoints.
    const [name0, p0] = pd[4];
    expect(relErr(optDev.stateFor(p0)!.m.toArray(), optCpu.stateFor(pc.get(name0)!)!.m.toArray())).toBeLessThan(1e-3);
    cpu.dispose();
    dev.dispose();
  });

  test('evaluate, loadStateDict and to() keep host and device in step', async () => {
    const dev = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    const opt = new duat.optim.AdamW(dev.parameters(), { lr: 1e-2 });
    const x = images(16, 5), y = labels(16, 2);
    const first = await dev.trainStep(x, y, { optimizer: opt });
    for (let i = 0; i < 20; i++) await dev.trainStep(x, y, { optimizer: opt });
    const e = await dev.evaluate(x, y);
    expect(e.lossSum / 16).toBeLessThan(first.loss);  // it learns
    expect(e.predictions.length).toBe(16);
    // A CPU copy of the trained model agrees with the GPU's evaluation.
    const cpu = new duat.ParaFormer(SMALL);
    cpu.loadStateDict(dev.stateDict());
    const c = await cpu.evaluate(x, y);
    expect(Math.abs(c.lossSum - e.lossSum)).toBeLessThan(1e-3 * Math.max(1, c.lossSum));
    // Loading other parameters into the GPU model takes effect on the next use.
    const fresh = new duat.ParaFormer(SMALL);
    dev.loadStateDict(fresh.stateDict());
    const f1 = await fresh.evaluate(x, y), f2 = await dev.evaluate(x, y);
    expect(Math.abs(f1.lossSum - f2.lossSum)).toBeLessThan(1e-3 * Math.max(1, f1.lossSum));
    // Back to the CPU: differentiable again.
    dev.to('cpu');
    expect(dev.device).toBe('cpu');
    const logits = dev.forward(x);
    expect(logits.requiresGrad).toBe(true);
    for (const t of [x, logits]) t.dispose();
    for (const m of [dev, cpu, fresh]) m.dispose();
  });

  test('restoring parameters and optimizer state mid-session (a checkpoint resume) takes effect on the GPU', async () => {
    const x = images(8, 3), y = labels(8, 1);
    const a = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    const optA = new duat.optim.AdamW(a.parameters(), { lr: 1e-2 });
    for (let i = 0; i < 2; i++) await a.trainStep(x, y, { optimizer: optA });
    const snap = a.namedParameters().map(([n, p]) => ({ n, p: p.clone(), m: optA.stateFor(p)!.m.clone(), v: optA.stateFor(p)!.v.clone() }));
    const step = optA.stepCount;
    for (let i = 0; i < 2; i++) await a.trainStep(x, y, { optimizer: optA });
    // What loadTrainingState does, into the same model and optimizer (their state tensors replaced).
    const restore = (m: duat.ParaFormer, opt: duat.optim.AdamW) => {
      m.loadStateDict(new Map(snap.map((e) => [e.n, e.p] as [string, duat.Tensor])));
      opt.stepCount = step;
      const named = new Map(m.namedParameters());
      for (const e of snap) opt.restoreState(named.get(e.n)!, duat.keep(e.m.clone()), duat.keep(e.v.clone()), step);
    };
    restore(a, optA);
    const r1 = await a.trainStep(x, y, { optimizer: optA });
    // A fresh model and optimizer restored from the same snapshot take the same step.
    const b = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    const optB = new duat.optim.AdamW(b.parameters(), { lr: 1e-2 });
    restore(b, optB);
    const r2 = await b.trainStep(x, y, { optimizer: optB });
    expect(Math.abs(r1.loss - r2.loss)).toBeLessThan(1e-5 * Math.max(1, r2.loss));
    const pb = new Map(b.namedParameters());
    for (const [n, p] of a.namedParameters()) {
      const d = p.toArray(), e = pb.get(n)!.toArray();
      // Adam's zero-gradient noise on the key bias (see above) allows it up to one step of lr.
      if (n.endsWith('attn.qkv.bias')) expect(d.reduce((w, v, i) => Math.max(w, Math.abs(v - e[i])), 0)).toBeLessThan(1e-2 + 1e-5);
      else expect([n, relErr(d, e) < 1e-4]).toEqual([n, true]);
    }
    for (const e of snap) for (const t of [e.p, e.m, e.v]) t.dispose();
    x.dispose();
    a.dispose();
    b.dispose();
  });

  test('typed errors: SGD, bad labels, a step while one runs', async () => {
    const dev = new duat.ParaFormer({ ...SMALL, device: 'cuda' });
    const x = images(4, 1);
    await expect(dev.trainStep(x, labels(4, 0), { optimizer: new duat.optim.SGD(dev.parameters(), { lr: 0.1 }) }))
      .rejects.toThrow(duat.DeviceError);
    const opt = new duat.optim.AdamW(dev.parameters());
    await expect(dev.trainStep(x, Int32Array.from([0, 1, 2, 99]), { optimizer: opt })).rejects.toThrow(duat.ArgumentError);
    const running = dev.trainStep(x, labels(4, 0), { optimizer: opt });
    await expect(dev.trainStep(x, labels(4, 0), { optimizer: opt })).rejects.toThrow(duat.StateError);
    await running;
    expect(() => dev.forward(duat.zeros([2, 1, 20, 20]))).toThrow(duat.ShapeError);
    // The native session re-checks what it copies: count and size of every tensor.
    const session = native().cudaSessionCreate(dev.nativeConfig(), 0);
    const handles = dev.parameters().map((p) => p.handle);
    expect(() => native().cudaSessionUpload(session, handles.slice(1), null, null)).toThrow(duat.ShapeError);
    const small = duat.zeros([3]);
    expect(() => native().cudaSessionUpload(session, [small.handle, ...handles.slice(1)], null, null)).toThrow(/values, the model needs/);
    small.dispose();
    x.dispose();
    dev.dispose();
  });
});
