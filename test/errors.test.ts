/**
 * Bad input: every op's argument errors with class and message; disposed tensors; and a fuzz
 * that feeds garbage to every public function and accepts only duat's typed errors.
 */
import * as duat from '../lib';
import { rng } from './helpers/gradcheck';

const { F } = duat;

function t(shape: number[], options?: duat.TensorOptions) {
  return duat.zeros(shape, options);
}

describe('argument errors name the problem', () => {
  const cases: [string, () => unknown, new (...a: never[]) => Error, RegExp][] = [
    ['add of unbroadcastable shapes', () => t([2, 3]).add(t([4])), duat.ShapeError, /add: shapes \[2, 3\] and \[4\] cannot be broadcast/],
    ['mul of an int32 tensor', () => t([2]).mul(t([2], { dtype: 'int32' })), duat.DTypeError, /mul: expected the second operand to be float32/],
    ['add of a non-tensor', () => t([2]).add('x' as never), duat.ArgumentError, /Expected a tensor for the second operand but received "x" \(string\)/],
    ['add of NaN', () => t([2]).add(NaN), duat.ArgumentError, /Expected number for the scalar operand but received NaN/],
    ['matmul inner mismatch', () => t([2, 3]).matmul(t([4, 2])), duat.ShapeError, /matmul: inner dimensions differ: \[2, 3\] @ \[4, 2\]/],
    ['matmul of a vector', () => t([3]).matmul(t([3, 2])), duat.ShapeError, /matmul: both operands need at least 2 dimensions/],
    ['matmul batch mismatch', () => t([2, 2, 3]).matmul(t([3, 3, 2])), duat.ShapeError, /matmul: batch dimensions differ/],
    ['linear weight mismatch', () => F.linear(t([2, 5]), t([3, 4])), duat.ShapeError, /linear: input shape \[2, 5\] does not end in the weight's input size 4/],
    ['linear bias mismatch', () => F.linear(t([2, 4]), t([3, 4]), t([2])), duat.ShapeError, /linear: bias shape \[2\] does not match the weight's output size 3/],
    ['sum over a missing dim', () => t([2, 3]).sum(2), duat.ShapeError, /sum: dimension 2 is out of range for a tensor of 2 dimensions/],
    ['sum over a dim twice', () => t([2, 3]).sum([1, -1]), duat.ShapeError, /sum: dimension -1 is listed twice/],
    ['reshape to a wrong size', () => t([2, 3]).reshape(4, 2), duat.ShapeError, /reshape: cannot reshape \[2, 3\] \(6 elements\) to \[4, 2\]/],
    ['reshape with two -1', () => t([2, 3]).reshape(-1, -1), duat.ShapeError, /only one dimension can be -1/],
    // 2^32 x 2^32 wraps to 0 in 64-bit arithmetic: an empty tensor must not be viewed that way.
    ['reshape to 2^64 elements', () => t([0]).reshape(2 ** 32, 2 ** 32), duat.ShapeError, /\[4294967296, 4294967296\] has more than 2\^40 elements/],
    ['an empty shape whose other dimensions multiply past 2^40 (its strides would overflow)', () => duat.zeros([0, 2 ** 40, 2 ** 40]), duat.ShapeError, /has more than 2\^40 elements/],
    ['a view of 2^64 elements', () => t([0]).reshape(2 ** 32, -1, 2 ** 32), duat.ShapeError, /reshape: cannot infer the -1|more than 2\^40 elements/],
    ['reshape with a fraction', () => t([2, 3]).reshape(1.5, 4), duat.ShapeError, /Expected integer in \[-1, \d+\] for shape\[0\] but received 1.5/],
    ['permute with a repeat', () => t([2, 3]).permute(0, 0), duat.ShapeError, /permute: dimension 0 appears twice/],
    ['slice with step 0', () => t([4]).slice(0, 0, 2, 0), duat.ArgumentError, /Expected integer in \[1, \d+\] for step but received 0/],
    ['concat of mismatched shapes', () => F.concat([t([2, 3]), t([3, 3])], 1), duat.ShapeError, /concat: tensor 1 has shape \[3, 3\], which does not match \[2, 3\] outside dimension 1/],
    ['concat of nothing', () => F.concat([], 0), duat.ShapeError, /concat: needs at least one tensor/],
    ['layerNorm weight mismatch', () => F.layerNorm(t([2, 4]), t([3])), duat.ShapeError, /layerNorm: weight shape \[3\] does not match the normalised size 4/],
    ['layerNorm eps 0', () => F.layerNorm(t([2, 4]), null, null, 0), duat.ArgumentError, /Expected finite number >= 5e-324 for eps but received 0/],
    ['layerNorm with a residual and an affine', () => F.layerNorm(t([2, 4]), t([4]), null, 1e-6, t([2, 4])), duat.ArgumentError, /a residual input excludes the affine/],
    ['layerNorm with a residual that does not divide the rows', () => F.layerNorm(t([5, 4]), null, null, 1e-6, t([2, 4])), duat.ShapeError, /residual shape \[2, 4\] does not divide the rows of \[5, 4\]/],
    ['branchLinear with a 2-D weight', () => F.branchLinear(t([3, 4]), t([5, 4])), duat.ShapeError, /branchLinear: expected the weight \(N, O, C\) to have 3 dimensions/],
    ['branchLinear with an input of another width', () => F.branchLinear(t([3, 5]), t([2, 6, 4])), duat.ShapeError, /input shape \[3, 5\] is neither \(R, 4\) nor \(2, R, 4\)/],
    ['branchLinear with half a LayerNorm', () => F.branchLinear(t([3, 4]), t([2, 6, 4]), null, { lnWeight: t([2, 4]) }), duat.ArgumentError, /needs both its weight and its bias/],
    ['stageSum with a misfit fc2 weight', () => F.stageSum(t([3, 4]), t([2, 3, 5]), t([4, 9]), t([4]), t([2, 3, 4])), duat.ShapeError, /stageSum: the concatenated fc2 weight has shape \[4, 9\] but needs \[4, 10\]/],
    ['attention with heads not dividing C', () => F.attention(t([1, 4, 12]), 3), duat.ShapeError, /attention: 3 heads do not divide the width 4/],
    ['attention of non-3C', () => F.attention(t([1, 4, 10]), 1), duat.ShapeError, /the last dimension of qkv \(10\) is not 3C/],
    ['attention with fractional heads', () => F.attention(t([1, 4, 12]), 1.5), duat.ArgumentError, /Expected integer in \[1, 65536\] for heads but received 1.5 \(number\)/],
    ['crossEntropy label out of range', () => F.crossEntropy(t([2, 3]), Int32Array.from([0, 3])), duat.ArgumentError, /crossEntropy: label 3 at index 1 is outside \[0, 3\)/],
    ['crossEntropy negative label', () => F.crossEntropy(t([2, 3]), Int32Array.from([-1, 0])), duat.ArgumentError, /label -1 at index 0/],
    ['crossEntropy batch mismatch', () => F.crossEntropy(t([2, 3]), Int32Array.from([0])), duat.ShapeError, /labels shape \[1\] does not match a batch of 2/],
    ['crossEntropy float labels', () => F.crossEntropy(t([2, 3]), t([2])), duat.DTypeError, /expected labels to be int32/],
    ['crossEntropy smoothing 1', () => F.crossEntropy(t([2, 3]), Int32Array.from([0, 1]), { labelSmoothing: 1 }), duat.ArgumentError, /labelSmoothing/],
    ['patchify with a non-dividing patch', () => F.patchify(t([1, 1, 5, 5]), 2), duat.ShapeError, /patchify: patch size 2 does not divide the image size 5/],
    ['patchify of non-square images', () => F.patchify(t([1, 1, 4, 6]), 2), duat.ShapeError, /images must be square/],
    ['patchEmbed channel mismatch', () => F.patchEmbed(t([1, 3, 4, 4]), t([8, 1, 2, 2]), null, 2), duat.ShapeError, /weight \[8, 1, 2, 2\] does not fit images \[1, 3, 4, 4\]/],
    ['dropout p = 1', () => F.dropout(t([2]), 1), duat.ArgumentError, /for p but received 1 \(number\)/],
    ['tensor with a wrong length', () => duat.tensor(new Float32Array(5), [2, 3]), duat.ShapeError, /data has 5 elements but shape \[2, 3\] needs 6/],
    ['tensor with a negative dim', () => duat.tensor([1], [-1]), duat.ShapeError, /Expected integer in \[0, \d+\] for shape\[0\] but received -1/],
    ['tensor with a NaN dim', () => duat.zeros([NaN]), duat.ShapeError, /for shape\[0\] but received NaN/],
    ['tensor with a non-number', () => duat.tensor([1, 'a' as never]), duat.ArgumentError, /Expected number for data\[1\] but received "a" \(string\)/],
    ['int32 from fractions', () => duat.tensor([1.5], [1], { dtype: 'int32' }), duat.ArgumentError, /Expected int32 for data\[0\]/],
    ['requiresGrad on int32', () => duat.zeros([2], { dtype: 'int32', requiresGrad: true }), duat.DTypeError, /only float32 tensors can require gradients/],
    ['cuda on a CPU build', () => duat.zeros([2], { device: 'cuda' }), duat.DeviceError, /device 'cuda' is not available/],
    ['an unknown device', () => duat.zeros([2], { device: 'tpu' as never }), duat.ArgumentError, /for device but received "tpu"/],
    ['backward of a non-scalar', () => t([2], { requiresGrad: true }).mul(2).backward(), duat.ShapeError, /backward: the tensor has shape \[2\]/],
    ['backward without grad', () => t([1]).backward(), duat.StateError, /does not require grad/],
    ['item of many', () => t([2]).item(), duat.ShapeError, /item: the tensor has 2 elements, not one/],
    ['toInt32Array of float', () => t([2]).toInt32Array(), duat.DTypeError, /toInt32Array: the tensor is float32/],
    ['AdamW without params', () => new duat.optim.AdamW([]), duat.ArgumentError, /non-empty array of parameters/],
    ['AdamW with a negative lr', () => new duat.optim.AdamW([t([1])], { lr: -1 }), duat.ArgumentError, /Expected finite number >= 0 for lr but received -1/],
    ['a parameter group with a negative lr', () => new duat.optim.AdamW([{ params: [t([1])], options: { lr: -1 } }]), duat.ArgumentError, /Expected finite number >= 0 for params\[0\]\.options\.lr but received -1/],
    ['a parameter group with an unknown option', () => new duat.optim.SGD([{ params: [t([1])], options: { lrr: 1 } as never }]), duat.ArgumentError, /Unknown option params\[0\]\.options\.lrr/],
    ['Linear with zero features', () => new duat.nn.Linear(0, 3), duat.ArgumentError, /Expected integer in \[1, \d+\] for inFeatures but received 0/],
    ['setNumThreads(-1)', () => duat.setNumThreads(-1), duat.ArgumentError, /Expected integer in \[0, 256\] for threads but received -1/],
  ];
  test.each(cases)('%s', (_, fn, cls, msg) => {
    duat.tidy(() => {
      let caught: unknown;
      try {
        fn();
      } catch (e) {
        caught = e;
      }
      expect(caught).toBeInstanceOf(cls);
      expect(caught).toBeInstanceOf(duat.DuatError);
      expect((caught as Error).message).toMatch(msg);
    });
  });
});

describe('disposed tensors', () => {
  test('every use of a disposed tensor throws DisposedError; dispose is idempotent', () => {
    const a = duat.ones([2]);
    const b = duat.ones([2]);
    a.dispose();
    a.dispose();
    expect(a.isDisposed).toBe(true);
    expect(() => a.toArray()).toThrow(duat.DisposedError);
    expect(() => a.shape).toThrow(duat.DisposedError);
    expect(() => b.add(a)).toThrow(duat.DisposedError);
    expect(() => F.concat([b, a])).toThrow(duat.DisposedError);
    expect(String(a)).toBe('Tensor(disposed)');
    b.dispose();
  });
  test('Symbol.dispose disposes', () => {
    const a = duat.ones([2]);
    (a as unknown as Record<symbol, () => void>)[(Symbol as unknown as { dispose: symbol }).dispose]();
    expect(a.isDisposed).toBe(true);
  });
  test('a second backward through a freed graph throws StateError', () => {
    duat.tidy(() => {
      const x = duat.ones([2], { requiresGrad: true });
      const y = x.mul(x).sum();
      y.backward();
      expect(() => y.backward()).toThrow(duat.StateError);
    });
  });
});

describe('fuzz: garbage into every public function', () => {
  const garbage: unknown[] = [
    undefined, null, NaN, -1, 0, 1.5, 2 ** 60, Infinity, '', 'abc', true, {}, [], [NaN], [-1], [1.5], [2 ** 45, 2 ** 45],
    { shape: 3 }, () => 1, Symbol('s'), new Float32Array(3), new Int32Array(2), new Float64Array(2), 10n, [[1]],
  ];
  const live = () => duat.ones([2, 2]);
  const functions: [string, (...args: unknown[]) => unknown][] = [];
  const add = (name: string, fn: (...args: unknown[]) => unknown) => functions.push([name, fn]);
  for (const name of ['tensor', 'zeros', 'ones', 'full', 'randn', 'rand', 'truncNormal', 'tidy', 'noGrad', 'keep', 'manualSeed', 'setNumThreads'] as const) {
    add(name, (...a) => (duat[name] as (...x: unknown[]) => unknown)(...a));
  }
  for (const name of Object.keys(F) as (keyof typeof F)[]) add(`F.${name}`, (...a) => (F[name] as (...x: unknown[]) => unknown)(...a));
  const methods = ['add', 'sub', 'mul', 'div', 'matmul', 'sum', 'mean', 'reshape', 'permute', 'transpose', 'slice', 'softmax', 'logSoftmax', 'backward', 'copy_'] as const;
  for (const m of methods) add(`Tensor.${m}`, (...a) => (live()[m] as (...x: unknown[]) => unknown)(...a));
  add('Linear', (...a) => new duat.nn.Linear(a[0] as number, a[1] as number, a[2] as never));
  add('LayerNorm', (...a) => new duat.nn.LayerNorm(a[0] as number, a[1] as number));
  add('AdamW', (...a) => new duat.optim.AdamW(a[0] as never, a[1] as never));
  add('SGD', (...a) => new duat.optim.SGD(a[0] as never, a[1] as never));
  add('loadStateDict', (...a) => new duat.nn.Linear(2, 2, { seed: 1 }).loadStateDict(a[0] as never, a[1] as never));
  add('clipGradNorm', (...a) => duat.optim.clipGradNorm(a[0] as never, a[1] as never));

  test.each(functions)('%s accepts only typed errors', (_, fn) => {
    const next = rng(99);
    const pick = () => (next() < 0.3 ? live() : garbage[Math.floor(next() * garbage.length)]);
    duat.tidy(() => {
      for (let trial = 0; trial < 60; trial++) {
        const args = Array.from({ length: Math.floor(next() * 4) }, pick);
        try {
          const r = fn(...args);
          if (r instanceof duat.Tensor) r.dispose();
        } catch (e) {
          if (!(e instanceof duat.DuatError)) {
            throw new Error(`untyped error for (${args.map(String).join(', ')}): ${String(e)}`);
          }
        }
      }
    });
  });
});
