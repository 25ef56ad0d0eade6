/**
 * duat: Para-Former (parallel Transformer) networks for Node.js, on a native C++ engine with
 * autograd. This module holds the public exports only.
 * @packageDocumentation
 */
import * as fs from 'fs';
import * as path from 'path';

import * as distributed from './distributed';
import * as F from './functional';
import { native, NativeBackendInfo, PACKAGE_ROOT, verifyInstall } from './native';
import * as nn from './nn';
import * as optim from './optim';
import { checkInt, checkNumber } from './validate';

export { verifyInstall };

/** This package's version, from its package.json (`npx duat --version` prints it too). */
export const version: string = (JSON.parse(fs.readFileSync(path.join(PACKAGE_ROOT, 'package.json'), 'utf8')) as { version: string }).version;

export * from './errors';
export {
  full,
  keep,
  manualSeed,
  memory,
  resetPeakMemory,
  noGrad,
  ones,
  rand,
  randn,
  tensor,
  tidy,
  truncNormal,
  zeros,
  Tensor,
} from './tensor';
export type { Device, DType, RandomOptions, TensorData, TensorOptions } from './tensor';
export { distributed, F, nn, optim };
export type { DistributedInfo } from './distributed';
export { ParaFormer } from './nn/ParaFormer';
export { load, loadViT, save } from './io/model';
export type { LoadViTOptions } from './io/model';
export { loadSafetensors, safetensorsMetadata, saveSafetensors } from './io/safetensors';
export { evaluate, fit, learningRate, progressivePhase, resolveFitOptions } from './train/fit';
export { serve } from './serve';
export { profile } from './profile';
export type { ProfileFamily, ProfileReport } from './profile';
export { compress, rankBranches } from './train/compress';
export type { RankOptions } from './train/compress';
export type { ModelServer, ServeOptions, ServeStats } from './serve';
export type { Data, EpochMetrics, EvalResult, FitOptions, FitResult, ProgressiveOptions, ResolvedFitOptions, StepMetrics } from './train/fit';
import * as data from './data';
export { data };
export type { InputSpec, ParaFormerConfig, ParaFormerOptions, Prediction } from './nn/ParaFormer';

/** What the loaded binary can do: CPU kernels chosen, threads, and whether CUDA is usable (and why not). */
export type BackendInfo = NativeBackendInfo;

/** Describes the loaded native backend. */
export function backendInfo(): BackendInfo {
  return native().backendInfo();
}

/** The machine's measured arithmetic limit, in GFLOP/s over `threads` threads (see {@link cpuPeak}). */
export interface CpuPeak {
  threads: number;
  /** The faster of the two float32 widths: the figure efficiencies are computed against (null off x86-64). */
  fp32: number | null;
  fp32Avx2: number | null;
  fp32Avx512: number | null;
  /** The bf16 products' instructions in use (AMX tiles where active, else `vdpbf16ps`): the figure
   * bf16 efficiencies are computed against; null without AVX512_BF16. */
  bf16: number | null;
  /** `vdpbf16ps` (AVX512_BF16): bf16 products summed in float32; null without the instructions. */
  bf16Avx512: number | null;
  /** `tdpbf16ps` (AMX-BF16) on 16 x 16 float32 tiles; null without AMX (or the OS's leave to use it). */
  bf16Amx: number | null;
}

/**
 * Measures the CPU's peak: chains of independent FMAs on `threads` threads of the pool (default:
 * all of them) for about `seconds` each, registers only. CPUs differ (some execute a 512-bit FMA
 * as two 256-bit halves, others at full width), so benchmarks report efficiency against this
 * figure, measured where they run, never against a datasheet.
 */
export function cpuPeak(options: { threads?: number; seconds?: number } = {}): CpuPeak {
  const threads = checkInt(options.threads ?? getNumThreads(), 'threads', 1, 256);
  const seconds = checkNumber(options.seconds ?? 0.5, 'seconds', 0.01, 60);
  const n = native();
  const fp32Avx2 = n.cpuPeak(0, threads, seconds), fp32Avx512 = n.cpuPeak(1, threads, seconds);
  const peak: CpuPeak = {
    threads: Math.min(threads, getNumThreads()), fp32: fp32Avx2 === null && fp32Avx512 === null ? null : Math.max(fp32Avx2 ?? 0, fp32Avx512 ?? 0), fp32Avx2, fp32Avx512,
    bf16: null, bf16Avx512: n.cpuPeak(2, threads, seconds), bf16Amx: n.cpuPeak(3, threads, seconds),
  };
  peak.bf16 = backendInfo().cpu.amx ? peak.bf16Amx : peak.bf16Avx512;
  return peak;
}

/** Sets the number of threads of duat's one thread pool (0 = all cores). Returns the count in effect. */
export function setNumThreads(n: number): number {
  return native().setNumThreads(checkInt(n, 'threads', 0, 256));
}

/**
 * The CPU block cache: freed blocks of 64 KiB and more are kept for reuse (up to `limitBytes`; a
 * block freed into a full cache replaces the longest-cached ones), so a training loop stops
 * allocating after its first step. The limit is by default the larger of 1 GiB and the most bytes
 * of such blocks the program has had in use at once (`limitBytes` reports it as it stands), so a
 * step of any size reuses its buffers; setCacheLimit fixes it. memory() counts live tensors only;
 * the cache is reported here.
 */
export function cacheInfo(): { cachedBytes: number; limitBytes: number; hits: number; misses: number } {
  return native().cacheStats();
}

/** Returns every cached block to the system. */
export function emptyCache(): void {
  native().emptyCache();
}

/**
 * Sets the most bytes the CPU block cache keeps (0 turns caching off), or 'auto' (the default: the
 * larger of 1 GiB and the most the program has had in use at once), and empties it.
 */
export function setCacheLimit(bytes: number | 'auto'): void {
  native().setCacheLimit(bytes === 'auto' ? -1 : checkInt(bytes, 'bytes', 0, 2 ** 50));
}

/** The number of threads of duat's thread pool. */
export function getNumThreads(): number {
  return native().backendInfo().cpu.threads;
}
