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
import { checkInt } from './validate';

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

/** Sets the number of threads of duat's one thread pool (0 = all cores). Returns the count in effect. */
export function setNumThreads(n: number): number {
  return native().setNumThreads(checkInt(n, 'threads', 0, 256));
}

/**
 * The CPU block cache: freed blocks of 64 KiB and more are kept for reuse (up to `limitBytes`,
 * default 1 GiB), so a training loop stops allocating after its first step. memory() counts
 * live tensors only; the cache is reported here.
 */
export function cacheInfo(): { cachedBytes: number; limitBytes: number; hits: number; misses: number } {
  return native().cacheStats();
}

/** Returns every cached block to the system. */
export function emptyCache(): void {
  native().emptyCache();
}

/** Sets the most bytes the CPU block cache keeps (0 turns caching off) and empties it. */
export function setCacheLimit(bytes: number): void {
  native().setCacheLimit(checkInt(bytes, 'bytes', 0, 2 ** 50));
}

/** The number of threads of duat's thread pool. */
export function getNumThreads(): number {
  return native().backendInfo().cpu.threads;
}
