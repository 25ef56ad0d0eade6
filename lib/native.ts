/**
 * The private, typed raw binding and its loader. Nothing here is exported from the package;
 * lib/tensor.ts and friends are the only callers.
 * @internal
 */
import * as fs from 'fs';
import * as path from 'path';

import { NATIVE_ERROR_CLASSES, NativeLoadError } from './errors';

/** An opaque native tensor handle. */
export interface NativeTensor {
  readonly __brand: 'NativeTensor';
}

type H = NativeTensor;

export interface NativeDescription {
  shape: number[];
  dtype: 'float32' | 'int32';
  device: 'cpu' | 'cuda';
  requiresGrad: boolean;
  isLeaf: boolean;
}

export interface NativeBackendInfo {
  napiVersion: number;
  /** bf16: whether 'bf16' precision computes in bf16 on the CPU (AVX-512 kernels active and AVX512_BF16). */
  /** gemmTuning: how the packed products walk memory, chosen for the CPU's vendor ('amd' or
   * 'intel'; DUAT_GEMM_TUNING overrides it): the same results either way. amx: whether bf16
   * products run on AMX tiles (AMX-BF16; DUAT_CPU_AMX=0 keeps them on vdpbf16ps). */
  cpu: { isa: string; isaBest: string; threads: number; bf16: boolean; gemmTuning: string; amx: boolean };
  /**
   * Whether CUDA was compiled in, is usable, and if not, why; device 0's name and capability.
   * `testDevice`: 'cuda' is served by the test device (host memory, CPU kernels), for tests.
   */
  cuda: {
    available: boolean;
    built: boolean;
    testDevice: boolean;
    devices: number;
    device: string;
    runtimeVersion: number;
    driverVersion: number;
    reason: string;
  };
}

/** Totals of the CPU backend's calls between profileStart and profileStop (native/core/profile.h). */
export interface NativeProfile {
  seconds: number;
  kernelSeconds: number;
  pageFaults: number;
  families: { family: string; seconds: number; calls: number; flops: number; pageFaults: number; kernelSeconds: number; idleSeconds: number }[];
  calls: { label: string; family: string; seconds: number; calls: number; flops: number; idleSeconds: number }[];
}

/** A device name as native code reads it. */
export type NativeDevice = 'cpu' | 'cuda';

/** Every export of native/bindings/addon.cpp and model_bindings.cpp, with its argument types. */
export interface RawBinding {
  NativeTensor: new () => H;
  registerErrors(classes: ReadonlyArray<new (message: string) => Error>): void;
  fromData(data: Float32Array | Int32Array, shape: number[], device?: NativeDevice): H;
  zeros(shape: number[], dtype: 0 | 1, device?: NativeDevice): H;
  full(shape: number[], value: number, device?: NativeDevice): H;
  randn(shape: number[], seed: number, mean: number, std: number, device?: NativeDevice): H;
  rand(shape: number[], seed: number, low: number, high: number, device?: NativeDevice): H;
  truncNormal(shape: number[], seed: number, mean: number, std: number, a: number, b: number, device?: NativeDevice): H;
  describe(t: H): NativeDescription;
  toArray(t: H): Float32Array | Int32Array;
  item(t: H): number;
  grad(t: H): H | null;
  setRequiresGrad(t: H, on: boolean): void;
  zeroGrad(t: H): void;
  detach(t: H): H;
  clone(t: H): H;
  backward(t: H, grad: H | null): void;
  dispose(t: H): void;
  toDevice(t: H, device: NativeDevice): H;
  copyInto(dst: H, src: H): void;
  add(a: H, b: H): H;
  sub(a: H, b: H): H;
  mul(a: H, b: H): H;
  div(a: H, b: H): H;
  addScalar(a: H, s: number): H;
  mulScalar(a: H, s: number): H;
  matmul(a: H, b: H): H;
  linear(x: H, w: H, b: H | null): H;
  sum(x: H, dims: number[], keepDim: boolean): H;
  mean(x: H, dims: number[], keepDim: boolean): H;
  argmax(x: H): H;
  reshape(x: H, shape: number[]): H;
  permute(x: H, dims: number[]): H;
  transpose(x: H, d0: number, d1: number): H;
  slice(x: H, dim: number, start: number, end: number, step: number): H;
  concat(xs: H[], dim: number): H;
  contiguous(x: H): H;
  gelu(x: H): H;
  softmax(x: H, dim: number): H;
  logSoftmax(x: H, dim: number): H;
  dropout(x: H, p: number, seed: number): H;
  layerNorm(x: H, w: H | null, b: H | null, eps: number, residual?: H | null): H;
  branchLinear(x: H, w: H, b: H | null, lnWeight: H | null, lnBias: H | null, gelu: boolean, interleaved: boolean): H;
  stageSum(x: H, h: H, w2: H, b2: H, a: H, scale: number): H;
  attention(qkv: H, heads: number, branches?: number): H;
  attentionProbs(qkv: H, heads: number, branches?: number): H;
  crossEntropy(logits: H, labels: H, smoothing: number): H;
  patchify(images: H, patch: number): H;
  patchEmbed(images: H, w: H, b: H | null, patch: number): H;
  /** The squared L2 norm of all the tensors together. */
  sumOfSquares(ts: H[]): number;
  scaleInplace(t: H, s: number): void;
  memory(): { tensors: number; bytes: number; cudaBytes: number; peakBytes: number };
  resetPeakMemory(): void;
  cacheStats(): { cachedBytes: number; limitBytes: number; hits: number; misses: number };
  emptyCache(): void;
  setCacheLimit(bytes: number): void;  // -1: auto
  setGradEnabled(on: boolean): boolean;
  setNumThreads(n: number): number;
  setCpuIsa(isa: 0 | 1 | 2): number;
  cpuPeak(kind: 0 | 1 | 2 | 3, threads: number, seconds: number): number | null;
  profileStart(): void;
  profileStop(): NativeProfile;
  backendInfo(): NativeBackendInfo;
  /** Serves 'cuda' by the test device (host memory, CPU kernels); needs no tensor on 'cuda'. */
  setTestDevice(on: boolean): void;
  /** Kernel launches issued on a device so far. */
  launches(device: NativeDevice): number;
  // The model object (native/model/model.h); precision 0 fp32, 1 tf32, 2 bf16.
  modelSpec(config: NativeModelConfig): { name: string; shape: number[] }[];
  modelCreate(config: NativeModelConfig, params: H[], precision: number): ModelHandle;
  modelForward(model: ModelHandle, images: H): H;
  modelAttentionMaps(model: ModelHandle, images: H): H[];
  modelTo(model: ModelHandle, device: NativeDevice): void;
  modelSetPrecision(model: ModelHandle, precision: number): void;
  modelSetBranches(model: ModelHandle, active: number, frozen: number, freezeEmbedding: boolean): void;
  modelTrainStepAsync(model: ModelHandle, images: H, labels: H, optimizer: OptimizerHandle | null,
    groups: NativeGroupOptions[] | null, labelSmoothing: number, clipGradNorm: number, dataParallel?: boolean):
    Promise<{ loss: number; gradNorm: number; correct: number; skipped: boolean }>;
  modelEvaluateAsync(model: ModelHandle, images: H, labels: H | null, probabilities?: boolean):
    Promise<{ lossSum: number; correct: number; predictions: Int32Array; probabilities?: Float32Array }>;
  // duat.distributed (native/distributed/comm.h, native/bindings/dist_bindings.cpp).
  distributedInit(library?: string): NativeDistributedInfo;
  distributedInfo(): NativeDistributedInfo | null;
  distributedStats(): { calls: number; bytes: number; seconds: number };
  distributedAllreduce<A extends Float32Array | Float64Array>(data: A): A;
  distributedAllreduceTensor(t: H): void;
  distributedBroadcast<A extends ArrayBufferView>(data: A, root: number): A;
  distributedBarrier(): void;
  distributedAbort(code: number): never;
  distributedFinalize(): void;
  distributedBranchShare(branches: number, rank: number, size: number): { offset: number; count: number };
  // The optimizer (native/train/optimizer.h); kind 0 AdamW, 1 SGD.
  optimizerCreate(kind: 0 | 1, params: H[], groupOf: number[]): OptimizerHandle;
  optimizerStep(opt: OptimizerHandle, groups: NativeGroupOptions[]): void;
  /** The completed steps; sets them first when `steps` is given. */
  optimizerSteps(opt: OptimizerHandle, steps?: number): number;
  optimizerState(opt: OptimizerHandle, index: number): { a: H | null; b: H | null; step: number; rowSteps: number[] | null };
  optimizerSetState(opt: OptimizerHandle, index: number, a: H | null, b: H | null, step: number, rowSteps?: number[] | null): void;
  optimizerDispose(opt: OptimizerHandle): void;
  modelDispose(model: ModelHandle): void;
}

/** The native model object (opaque). */
export interface ModelHandle {
  readonly __brand: 'Model';
}

/** The native optimizer (opaque). */
export interface OptimizerHandle {
  readonly __brand: 'Optimizer';
}

/** The model configuration as native code reads it (native/model/paraformer.h). */
/** The distributed job as the native communicator sees it. */
export interface NativeDistributedInfo {
  rank: number;
  size: number;
  /** What carries the collectives, e.g. "Open MPI v4.1.4". */
  transport: string;
}

export interface NativeModelConfig {
  imageSize: number;
  patchSize: number;
  channels: number;
  classes: number;
  dim: number;
  heads: number;
  depth: number;
  branches: number;
  mlpHidden: number;
  eps: number;
  branchScale: number;
  /** One rank's share of the branches of a branch-parallel model (native/distributed/comm.h). */
  branchParallel?: boolean;
  /** ViT variants (native/model/paraformer.h). */
  layerScale?: boolean;
  preNorm?: boolean;
  patchBias?: boolean;
  avgPool?: boolean;
}

/** One parameter group's options as the native optimizer reads them. */
export interface NativeGroupOptions {
  lr: number;
  weightDecay: number;
  beta1?: number;
  beta2?: number;
  eps?: number;
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
}

/** The package root (this file is lib/native.ts in a checkout, dist/native.js when built). */
export const PACKAGE_ROOT = path.resolve(__dirname, '..');

/** The C library this process runs on: 'glibc', 'musl', or '' off Linux. */
export function libcFamily(): '' | 'glibc' | 'musl' {
  if (process.platform !== 'linux') return '';
  const header = (process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined)?.header;
  return header?.glibcVersionRuntime ? 'glibc' : 'musl';
}

/**
 * Where the loader looks, in order: DUAT_BINDING_PATH; a source build (build/Release, build/Debug)
 * unless DUAT_PREBUILDS_ONLY=1; the prebuilt binary for this platform, architecture and C library
 * (prebuilds/linux-x64/duat.glibc.node, as prebuildify --tag-libc names it), then an untagged one.
 */
export function candidatePaths(root = PACKAGE_ROOT): string[] {
  const out: string[] = [];
  if (process.env.DUAT_BINDING_PATH) out.push(path.resolve(process.env.DUAT_BINDING_PATH));
  if (process.env.DUAT_PREBUILDS_ONLY !== '1') {
    out.push(path.join(root, 'build', 'Release', 'duat.node'), path.join(root, 'build', 'Debug', 'duat.node'));
  }
  const dir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  const libc = libcFamily();
  if (libc) out.push(path.join(dir, `duat.${libc}.node`));
  out.push(path.join(dir, 'duat.node'));
  return out;
}

/** Loads the first addon that works, or throws NativeLoadError listing every attempt. */
export function loadBinding(paths = candidatePaths()): RawBinding {
  const attempts: { path: string; error: string }[] = [];
  for (const p of paths) {
    if (!fs.existsSync(p)) {
      attempts.push({ path: p, error: 'not found' });
      continue;
    }
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const binding = require(p) as RawBinding;
      binding.registerErrors(NATIVE_ERROR_CLASSES);
      return binding;
    } catch (e) {
      attempts.push({ path: p, error: e instanceof Error ? e.message : String(e) });
    }
  }
  const lines = attempts.map((a) => `  - ${a.path}: ${a.error}`).join('\n');
  throw new NativeLoadError(
    `duat could not load its native addon for ${process.platform}-${process.arch} (Node ${process.versions.node}, ` +
      `N-API ${process.versions.napi}). Tried:\n${lines}\n` +
      'Possible solutions:\n' +
      '  - reinstall the package (npm install duat) so the prebuilt binary is restored;\n' +
      '  - build from source: npm rebuild duat --build-from-source (needs cmake and a C++17 compiler);\n' +
      '  - point DUAT_BINDING_PATH at a working duat.node.',
    attempts,
  );
}

/**
 * Loads the addon in a child process first, so a broken or mismatched binary (one that would
 * crash the process on load) gives NativeLoadError with possible solutions instead.
 */
export function verifyInstall(): { path: string; backend: NativeBackendInfo } {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { spawnSync } = require('child_process') as typeof import('child_process');
  const script =
    `const n=require(${JSON.stringify(__filename)});` +
    'const b=n.native();process.stdout.write(JSON.stringify({path:n.bindingPath(),backend:b.backendInfo()}))';
  const args = __filename.endsWith('.ts') ? ['-r', 'ts-node/register/transpile-only', '-e', script] : ['-e', script];
  const r = spawnSync(process.execPath, args, { encoding: 'utf8', env: process.env });
  if (r.status === 0) return JSON.parse(r.stdout);
  const why = r.signal ? `the process loading it was killed by ${r.signal}` : (r.stderr || '').trim().split('\n').slice(0, 12).join('\n');
  throw new NativeLoadError(
    `duat's native addon failed its self-check: ${why}\n` +
      'Possible solutions:\n' +
      '  - reinstall the package (npm install duat) so the prebuilt binary is restored;\n' +
      '  - build from source: npm rebuild duat --build-from-source (needs cmake and a C++17 compiler);\n' +
      '  - point DUAT_BINDING_PATH at a working duat.node.',
  );
}

/** The optional package with CUDA compiled in, for this platform and architecture. */
export const CUDA_PACKAGE = `@duat/${process.platform}-${process.arch}-cuda`;

/**
 * The CUDA package's binary and its version, where the package is installed (found from duat's
 * own folder, as require would find it); null otherwise.
 */
export function cudaPackage(root = PACKAGE_ROOT): { binary: string; version: string } | null {
  let manifest: string;
  try {
    manifest = require.resolve(`${CUDA_PACKAGE}/package.json`, { paths: [root] });
  } catch {
    return null;
  }
  const version = (JSON.parse(fs.readFileSync(manifest, 'utf8')) as { version?: string }).version ?? '';
  return { binary: path.join(path.dirname(manifest), 'duat.node'), version };
}

/**
 * Picks the binary to load: the CUDA package's when it is installed, of duat's version, loads,
 * and finds CUDA usable; else the CPU binary (loadBinding), with the reason the CUDA package was
 * not taken. DUAT_BINDING_PATH, or DUAT_CUDA_PACKAGE=0, leaves the package out.
 */
export function chooseBinding(root = PACKAGE_ROOT): { binding: RawBinding; path: string; cudaPackageNote: string } {
  let note = '';
  if (!process.env.DUAT_BINDING_PATH && process.env.DUAT_CUDA_PACKAGE !== '0') {
    const pkg = cudaPackage(root);
    const own = (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version;
    if (!pkg) {
      note = `the CUDA package is not installed (npm install ${CUDA_PACKAGE}: CUDA built in, for an NVIDIA driver 580 or newer)`;
    } else if (pkg.version !== own) {
      note = `${CUDA_PACKAGE} ${pkg.version} is installed, but duat is ${own}: install ${CUDA_PACKAGE}@${own}`;
    } else {
      try {
        const binding = loadBinding([pkg.binary]);
        const cuda = binding.backendInfo().cuda;
        if (cuda.available) return { binding, path: pkg.binary, cudaPackageNote: '' };
        note = `${CUDA_PACKAGE} is installed, but CUDA is unusable: ${cuda.reason}`;
      } catch (e) {
        const first = e instanceof NativeLoadError && e.attempts.length ? e.attempts[0].error : String(e);
        note = `${CUDA_PACKAGE} is installed, but its binary does not load: ${first.split('\n')[0]}`;
      }
    }
  }
  const paths = candidatePaths(root);
  const binding = loadBinding(paths);
  return { binding, path: paths.find((p) => fs.existsSync(p)) ?? '', cudaPackageNote: note };
}

let cached: RawBinding | undefined;
let loadedFrom = '';

/** Where the loaded binding came from. */
export function bindingPath(): string {
  native();
  return loadedFrom;
}

/**
 * The loaded binding (loaded on first use; see chooseBinding). When CUDA is unusable in a binary
 * built without it, backendInfo().cuda.reason says why the CUDA package was not taken too.
 * DUAT_TEST_DEVICE=1 serves 'cuda' by the test device (host memory, CPU kernels) from the start:
 * the whole CUDA path, the CLI's included, on any machine.
 */
export function native(): RawBinding {
  if (!cached) {
    const { binding, path: from, cudaPackageNote } = chooseBinding();
    if (cudaPackageNote) {
      const info = binding.backendInfo.bind(binding);
      binding.backendInfo = () => {
        const i = info();
        if (!i.cuda.available && !i.cuda.built) i.cuda.reason = `${i.cuda.reason}; ${cudaPackageNote}`;
        return i;
      };
    }
    cached = binding;
    loadedFrom = from;
    if (process.env.DUAT_TEST_DEVICE === '1') cached.setTestDevice(true);
  }
  return cached;
}
