/**
 * duat on device 'cuda': tensors, ops, autograd, the model, its training step and the optimizer,
 * each against the CPU on the same values. With a usable GPU this runs the CUDA kernels; without
 * one it runs on the test device (DEVICE_CUDA served by host memory and the CPU kernels), which
 * exercises every CUDA code path but the kernels themselves: dispatch, memory placement, copies,
 * the graph on device tensors, the model object, the step and the optimizer. DUAT_REQUIRE_CUDA=1
 * (npm run test:gpu) makes a missing GPU a failure instead.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';
import { live } from './helpers/gradcheck';
import { native } from '../lib/native';
import { loadTrainingState, saveTrainingState } from '../lib/train/fit';

const real = duat.backendInfo().cuda.available;
if (!real && process.env.DUAT_REQUIRE_CUDA === '1') {
  throw new Error(`DUAT_REQUIRE_CUDA=1 but CUDA is unusable: ${duat.backendInfo().cuda.reason}`);
}

const SMALL = { depth: 2, branches: 3, dim: 32, heads: 2, mlpRatio: 2, patchSize: 7, seed: 3 } as const;
// Float32 on both sides; a GPU sums in another order: a few float32 ulps over ~100-term sums.
const FP32_TOL = 1e-4;

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

function adamwGroups(m: duat.ParaFormer): duat.optim.AdamW {
  const noDecay = new Set(m.noDecayNames());
  const named = m.namedParameters();
  return new duat.optim.AdamW([
    { params: named.filter(([n]) => !noDecay.has(n)).map(([, p]) => p), options: { weightDecay: 0.05 } },
    { params: named.filter(([n]) => noDecay.has(n)).map(([, p]) => p), options: { weightDecay: 0, lr: 5e-3, betas: [0.8, 0.99] } },
  ], { lr: 2e-3 });
}

describe('device option', () => {
  test("bad devices and precisions are argument errors", () => {
    expect(() => new duat.ParaFormer({ ...SMALL, device: 'tpu' as 'cpu' })).toThrow(duat.ArgumentError);
    expect(() => new duat.ParaFormer({ ...SMALL, precision: 'fp16' as 'fp32' })).toThrow(/precision/);
    expect(() => duat.zeros([2], { device: 'gpu' as 'cuda' })).toThrow(duat.ArgumentError);
    const m = new duat.ParaFormer(SMALL);
    expect(() => m.to('gpu' as 'cuda')).toThrow(duat.ArgumentError);
    m.dispose();
  });

  (real ? test.skip : test)("'cuda' without a usable GPU is a DeviceError that says why, for models and tensors", () => {
    const reason = duat.backendInfo().cuda.reason;
    expect(reason).not.toBe('');
    expect(() => new duat.ParaFormer({ ...SMALL, device: 'cuda' })).toThrow(duat.DeviceError);
    expect(() => new duat.ParaFormer({ ...SMALL, device: 'cuda' })).toThrow(reason);
    expect(() => duat.zeros([2], { device: 'cuda' })).toThrow(reason);
    const t = duat.ones([2]);
    expect(() => t.to('cuda')).toThrow(duat.DeviceError);
    expect(t.to('auto').device).toBe('cpu');
    const m = new duat.ParaFormer({ ...SMALL, device: 'auto' });
    expect(m.device).toBe('cpu');
    expect(() => m.to('cuda')).toThrow(duat.DeviceError);
    expect(m.device).toBe('cpu');
    for (const d of [t, m]) d.dispose();
  });
});

describe(real ? 'on a GPU' : 'on the test device', () => {
  beforeAll(() => {
    if (!real) native().setTestDevice(true);
  });
  afterAll(() => {
    if (!real) native().setTestDevice(false);
  });

  test('tensors live on cuda, copy back to read, and ops refuse mixed devices naming both', () => {
    const before = live();
    duat.tidy(() => {
      const a = duat.tensor([1, 2, 3, 4], [2, 2], { device: 'cuda' });
      expect(a.device).toBe('cuda');
      expect(Array.from(a.toArray())).toEqual([1, 2, 3, 4]);
      const b = duat.ones([2, 2]);
      expect(() => a.add(b)).toThrow(duat.DeviceError);
      expect(() => a.add(b)).toThrow(/cuda and cpu/);
      const c = a.add(b.to('cuda')).mul(2);
      expect(c.device).toBe('cuda');
      expect(Array.from(c.toArray())).toEqual([4, 6, 8, 10]);
      expect(c.sum().item()).toBe(28);
      expect(duat.zeros([3], { device: 'cuda', dtype: 'int32' }).toInt32Array()).toEqual(new Int32Array(3));
      expect(Array.from(duat.randn([5], { seed: 4, device: 'cuda' }).toArray())).toEqual(Array.from(duat.randn([5], { seed: 4 }).toArray()));
      expect(duat.memory().cudaBytes).toBeGreaterThan(0);
    });
    expect(live()).toEqual(before);
  });

  test('autograd runs on cuda and through to(): gradients land on each leaf\'s device', () => {
    duat.tidy(() => {
      const x = duat.randn([4, 6], { seed: 1, requiresGrad: true });           // on the CPU
      const w = duat.randn([3, 6], { seed: 2, device: 'cuda', requiresGrad: true });
      const loss = duat.F.gelu(duat.F.linear(x.to('cuda'), w)).softmax().mul(duat.randn([4, 3], { seed: 3, device: 'cuda' })).sum();
      loss.backward();
      expect(x.grad!.device).toBe('cpu');
      expect(w.grad!.device).toBe('cuda');
      // The same on the CPU.
      const xc = duat.tensor(x.toArray(), [4, 6], { requiresGrad: true }), wc = duat.tensor(w.toArray(), [3, 6], { requiresGrad: true });
      duat.F.gelu(duat.F.linear(xc, wc)).softmax().mul(duat.randn([4, 3], { seed: 3 })).sum().backward();
      expect(relErr(x.grad!.toArray(), xc.grad!.toArray())).toBeLessThan(FP32_TOL);
      expect(relErr(w.grad!.toArray(), wc.grad!.toArray())).toBeLessThan(FP32_TOL);
    });
  });

  test('the model on cuda: forward records the graph, and logits and every gradient match the CPU', () => {
    const cpu = new duat.ParaFormer(SMALL);
    const dev = new duat.ParaFormer({ ...SMALL, precision: 'fp32' }).to('cuda');
    expect(dev.device).toBe('cuda');
    dev.loadStateDict(cpu.stateDict());
    duat.tidy(() => {
      const x = images(5, 1), y = labels(5, 2);
      const a = cpu.forward(x), b = dev.forward(x);
      expect(b.device).toBe('cuda');
      expect(b.requiresGrad).toBe(true);
      expect(relErr(b.toArray(), a.toArray())).toBeLessThan(FP32_TOL);
      duat.F.crossEntropy(a, y).backward();
      duat.F.crossEntropy(b, y).backward();
      const grads = new Map(cpu.namedParameters().map(([n, p]) => [n, p.grad!.toArray()]));
      for (const [n, p] of dev.namedParameters()) {
        expect(p.grad!.device).toBe('cuda');
        expect([n, relErr(p.grad!.toArray(), grads.get(n)!) < FP32_TOL]).toEqual([n, true]);
      }
      // DUAT's input-dependent parameters from the GPU.
      const ma = cpu.dynamicParameters(x), mb = dev.dynamicParameters(x);
      expect(mb.length).toBe(ma.length);
      mb.forEach((m, i) => expect(relErr(m.maps.toArray(), ma[i].maps.toArray())).toBeLessThan(FP32_TOL));
    });
    cpu.dispose();
    dev.dispose();
  });

  test('training steps match the CPU: AdamW with per-group lr, decay and betas, smoothing, clipping', async () => {
    const cpu = new duat.ParaFormer(SMALL);
    const dev = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    dev.loadStateDict(cpu.stateDict());
    const optCpu = adamwGroups(cpu), optDev = adamwGroups(dev);
    for (let step = 0; step < 3; step++) {
      const x = images(8, 10 + step), y = labels(8, step);
      const o = { labelSmoothing: 0.1, clipGradNorm: 0.5 };
      const a = await cpu.trainStep(x, y, { optimizer: optCpu, ...o });
      const b = await dev.trainStep(x, y, { optimizer: optDev, ...o });
      expect(Math.abs(b.loss - a.loss)).toBeLessThan(FP32_TOL * Math.max(1, a.loss));
      expect(Math.abs(b.gradNorm - a.gradNorm)).toBeLessThan(1e-3 * a.gradNorm);
      expect(b.correct).toBe(a.correct);
      x.dispose();
    }
    const pc = new Map(cpu.namedParameters());
    for (const [name, p] of dev.namedParameters()) {
      expect(p.device).toBe('cuda');
      const a = p.toArray(), b = pc.get(name)!.toArray();
      if (name.endsWith('attn.qkv.bias')) {
        // The key part of the QKV bias has an exactly zero gradient (softmax ignores a shift), so
        // Adam turns each device's rounding noise into steps of up to lr: equal within 3 steps.
        expect(a.reduce((w, v, i) => Math.max(w, Math.abs(v - b[i])), 0)).toBeLessThan(3 * 5e-3 + 1e-5);
      } else {
        expect([name, relErr(a, b) < FP32_TOL]).toEqual([name, true]);
      }
    }
    // The optimizer's state lives on the parameters' device.
    const [name0, p0] = dev.namedParameters()[4];
    duat.tidy(() => {
      const s = optDev.stateFor(p0)!;
      expect(s.m.device).toBe('cuda');
      expect(s.step).toBe(3);
      expect(relErr(s.m.toArray(), optCpu.stateFor(pc.get(name0)!)!.m.toArray())).toBeLessThan(1e-3);
    });
    for (const d of [optCpu, optDev, cpu, dev]) d.dispose();
  });

  test('SGD with per-group momentum (one group without) trains on cuda as on the CPU', async () => {
    const cpu = new duat.ParaFormer(SMALL);
    const dev = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    dev.loadStateDict(cpu.stateDict());
    const sgd = (m: duat.ParaFormer) => {
      const ps = m.parameters();
      return new duat.optim.SGD([
        { params: ps.slice(0, 10) },
        { params: ps.slice(10), options: { momentum: 0, lr: 0.05 } },
      ], { lr: 0.1, momentum: 0.9, nesterov: true });
    };
    const oc = sgd(cpu), od = sgd(dev);
    const x = images(6, 3), y = labels(6, 1);
    for (let i = 0; i < 3; i++) {
      const a = await cpu.trainStep(x, y, { optimizer: oc }), b = await dev.trainStep(x, y, { optimizer: od });
      expect(Math.abs(b.loss - a.loss)).toBeLessThan(FP32_TOL * Math.max(1, a.loss));
    }
    const pc = new Map(cpu.namedParameters());
    for (const [n, p] of dev.namedParameters()) expect([n, relErr(p.toArray(), pc.get(n)!.toArray()) < 1e-3]).toEqual([n, true]);
    duat.tidy(() => {
      expect(od.bufferFor(dev.parameters()[0])!.device).toBe('cuda');
      expect(od.bufferFor(dev.parameters()[12])).toBeUndefined();  // momentum 0: no buffer
    });
    for (const d of [x, oc, od, cpu, dev]) d.dispose();
  });

  // One optimizer path: opt.step() after a custom backward and trainStep apply the same update,
  // every group option included (lr, weight decay, betas, eps; momentum, dampening, Nesterov).
  const optimizers: [string, (m: duat.ParaFormer) => duat.optim.AdamW | duat.optim.SGD][] = [
    ['AdamW', (m) => {
      const ps = m.parameters();
      return new duat.optim.AdamW([
        { params: ps.slice(0, 9), options: { lr: 3e-3, betas: [0.85, 0.95], eps: 1e-6, weightDecay: 0.1 } },
        { params: ps.slice(9) },
      ], { lr: 1e-2, weightDecay: 0 });
    }],
    ['SGD', (m) => {
      const ps = m.parameters();
      return new duat.optim.SGD([
        { params: ps.slice(0, 9), options: { momentum: 0, lr: 0.05 } },
        { params: ps.slice(9, 20), options: { dampening: 0.3, nesterov: false } },
        { params: ps.slice(20), options: { weightDecay: 0.01 } },
      ], { lr: 0.1, momentum: 0.9, nesterov: true });
    }],
  ];
  test.each(optimizers)('%s: a custom loop (forward, backward, opt.step) on cuda equals trainStep, every group option', async (_name, make) => {
    const a = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    const b = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    const oa = make(a), ob = make(b);
    const x = images(4, 7), y = labels(4, 3);
    for (let i = 0; i < 3; i++) {
      await a.trainStep(x, y, { optimizer: oa });
      duat.tidy(() => duat.F.crossEntropy(b.forward(x), y).backward());
      ob.step();
      ob.zeroGrad();
    }
    const pb = new Map(b.namedParameters());
    for (const [n, p] of a.namedParameters()) expect([n, relErr(p.toArray(), pb.get(n)!.toArray()) < FP32_TOL]).toEqual([n, true]);
    expect(oa.stepCount).toBe(3);
    expect(ob.stepCount).toBe(3);
    for (const d of [x, oa, ob, a, b]) d.dispose();
  });

  test('to() moves parameters in place and back; the optimizer state follows; evaluate agrees with the CPU', async () => {
    const m = new duat.ParaFormer({ ...SMALL, precision: 'fp32' });
    const p0 = m.parameters()[2];
    const values = p0.toArray();
    const opt = new duat.optim.AdamW(m.parameters(), { lr: 1e-2 });
    const x = images(8, 5), y = labels(8, 2);
    await m.trainStep(x, y, { optimizer: opt });          // state made on the CPU
    m.to('cuda');
    expect(p0.device).toBe('cuda');                      // the tensor the caller holds moved too
    expect(p0.toArray()).not.toEqual(values);
    const first = await m.trainStep(x, y, { optimizer: opt });  // state follows to the GPU
    duat.tidy(() => expect(opt.stateFor(p0)!.m.device).toBe('cuda'));
    for (let i = 0; i < 15; i++) await m.trainStep(x, y, { optimizer: opt });
    const e = await m.evaluate(x, y);
    expect(e.lossSum / 8).toBeLessThan(first.loss);     // it learns
    const cpu = new duat.ParaFormer(SMALL);
    cpu.loadStateDict(m.stateDict());                    // copies across devices
    const c = await cpu.evaluate(x, y);
    expect(Math.abs(c.lossSum - e.lossSum)).toBeLessThan(1e-3 * Math.max(1, c.lossSum));
    expect(Array.from(c.predictions)).toEqual(Array.from(e.predictions));
    m.to('cpu');
    expect(m.device).toBe('cpu');
    expect(relErr(p0.toArray(), cpu.parameters()[2].toArray())).toBe(0);
    for (const d of [x, opt, m, cpu]) d.dispose();
  });

  test('predict on cuda gives the CPU model\'s probabilities', async () => {
    const cpu = new duat.ParaFormer(SMALL);
    cpu.inputSpec = { mean: [0.2], std: [0.4], classNames: ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'] };
    const gpu = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    gpu.loadStateDict(new Map(cpu.namedParameters()));
    gpu.inputSpec = cpu.inputSpec;
    const pixels = images(3, 21);
    const px = pixels.toArray() as Float32Array;
    pixels.dispose();
    const [want, got] = [await cpu.predict(px), await gpu.predict(px)];
    for (let i = 0; i < 3; i++) {
      expect(got[i].label).toBe(want[i].label);
      Array.from(got[i].probabilities).forEach((p, k) => expect(Math.abs(p - want[i].probabilities[k])).toBeLessThan(FP32_TOL));
    }
    cpu.dispose();
    gpu.dispose();
  });

  test('a training checkpoint written from cuda resumes on cuda and on the CPU to the same step', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-cuda-'));
    const x = images(16, 9);
    const a = new duat.ParaFormer({ ...SMALL, device: 'cuda', precision: 'fp32' });
    const opt = adamwGroups(a);
    for (let i = 0; i < 2; i++) await a.trainStep(x, labels(16, 4), { optimizer: opt });
    const file = path.join(dir, 'ckpt.safetensors');
    saveTrainingState(file, a, opt, { step: 2, epoch: 0, batch: 2 }, {} as Parameters<typeof saveTrainingState>[4], [1, 2]);
    const r1 = await a.trainStep(x, labels(16, 4), { optimizer: opt });
    for (const device of ['cuda', 'cpu'] as const) {
      const b = new duat.ParaFormer({ ...SMALL, device, precision: 'fp32', seed: 99 });
      const ob = adamwGroups(b);
      loadTrainingState(file, b, ob);
      const r2 = await b.trainStep(x, labels(16, 4), { optimizer: ob });
      expect([device, Math.abs(r2.loss - r1.loss) < FP32_TOL * Math.max(1, r1.loss)]).toEqual([device, true]);
      ob.dispose();
      b.dispose();
    }
    fs.rmSync(dir, { recursive: true, force: true });
    for (const d of [x, opt, a]) d.dispose();
  });

  // With one branch the fc2 matrices side by side are the one matrix (no copy): from two branches
  // on, the count is the same whatever the number.
  test('launches per training step and per forward do not grow with the branch count', async () => {
    const count = async (branches: number) => {
      const m = new duat.ParaFormer({ ...SMALL, branches, device: 'cuda' });
      const opt = new duat.optim.AdamW(m.parameters());
      const x = images(2, 1), y = labels(2, 0);
      await m.trainStep(x, y, { optimizer: opt });  // warm-up
      let t0 = native().launches('cuda');
      await m.trainStep(x, y, { optimizer: opt });
      const step = native().launches('cuda') - t0;
      t0 = native().launches('cuda');
      duat.noGrad(() => m.forward(x).dispose());
      duat.noGrad(() => m.forward(x).dispose());  // the second uses the cached folded weights
      const forward = native().launches('cuda') - t0;
      for (const d of [x, opt, m]) d.dispose();
      return { step, forward };
    };
    const two = await count(2), six = await count(6);
    expect(six).toEqual(two);
    expect(two.step).toBeGreaterThan(0);
  });

  test('a model in a training step is locked: its parameters and gradients refuse use until it settles', async () => {
    const m = new duat.ParaFormer({ ...SMALL, device: 'cuda' });
    const opt = new duat.optim.AdamW(m.parameters());
    const x = images(4, 1);
    const p = m.parameters()[3];
    const running = m.trainStep(x, labels(4, 0), { optimizer: opt });
    expect(() => p.zeroGrad()).toThrow(duat.StateError);
    expect(() => p.grad).toThrow(duat.StateError);
    expect(() => p.toArray()).toThrow(duat.StateError);
    expect(() => opt.step()).toThrow(duat.StateError);
    expect(() => m.forward(x)).toThrow(duat.StateError);
    expect(() => m.to('cpu')).toThrow(duat.StateError);
    await expect(m.trainStep(x, labels(4, 0), { optimizer: opt })).rejects.toThrow(duat.StateError);
    // save() never sees half a step: it is refused, and nothing is written.
    const file = path.join(os.tmpdir(), `duat-locked-${process.pid}.safetensors`);
    expect(() => duat.save(file, m)).toThrow(duat.StateError);
    expect(fs.existsSync(file)).toBe(false);
    expect(p.shape).toEqual(m.parameters()[3].shape);  // metadata stays readable
    await running;
    expect(p.toArray().length).toBeGreaterThan(0);
    await expect(m.trainStep(x, Int32Array.from([0, 1, 2, 99]), { optimizer: opt })).rejects.toThrow(/label 99 at index 3/);
    expect(() => m.forward(duat.zeros([2, 1, 20, 20]))).toThrow(duat.ShapeError);
    for (const d of [x, opt, m]) d.dispose();
  });

  test.each(['cpu', 'cuda'] as const)('a step that fails leaves parameters, optimizer state and counters as they were (%s)', async (device) => {
    const m = new duat.ParaFormer({ ...SMALL, device });
    const opt = adamwGroups(m);
    const x = images(4, 3);
    await m.trainStep(x, labels(4, 1), { optimizer: opt });
    const snapshot = () => duat.tidy(() => m.namedParameters().map(([, p]) => [p.toArray(), opt.stateFor(p)!.m.toArray(), opt.stateFor(p)!.step] as const));
    const before = snapshot(), steps = opt.stepCount;
    // Fails in the forward (images of the wrong size), and after the backward (an infinite lr that
    // the optimizer refuses before it changes anything).
    const small = duat.zeros([4, 1, 14, 14]);
    await expect(m.trainStep(small, labels(4, 1), { optimizer: opt })).rejects.toThrow(duat.ShapeError);
    small.dispose();
    opt.groups[1].options.lr = Infinity;
    await expect(m.trainStep(x, labels(4, 1), { optimizer: opt })).rejects.toThrow(/finite, non-negative lr/);
    expect(opt.stepCount).toBe(steps);
    const after = snapshot();
    after.forEach(([p, mo, st], i) => {
      expect(Array.from(p)).toEqual(Array.from(before[i][0]));
      expect(Array.from(mo)).toEqual(Array.from(before[i][1]));
      expect(st).toBe(before[i][2]);
    });
    for (const d of [x, opt, m]) d.dispose();
  });

  test('nothing leaks: device memory is back where it started after training and disposal', async () => {
    const before = live();
    const m = new duat.ParaFormer({ ...SMALL, device: 'cuda' });
    const opt = new duat.optim.AdamW(m.parameters());
    const x = images(4, 2);
    for (let i = 0; i < 3; i++) await m.trainStep(x, labels(4, i), { optimizer: opt });
    await m.evaluate(x, labels(4, 0));
    opt.dispose();
    m.dispose();
    x.dispose();
    expect(live()).toEqual(before);
  });
});
