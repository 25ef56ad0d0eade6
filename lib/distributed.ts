/**
 * duat.distributed: training over several processes and machines (docs/design.md, "Distributed
 * training"). Start the processes with `mpirun`; {@link init} joins the job, loading the system's
 * MPI library at run time (the package needs none until then). `fit(..., { parallel })` and
 * `duat train --parallel` call it themselves. Every rank must call the collectives in the same
 * order; they block the calling thread until every rank has arrived. A process that exits with
 * an error ends the whole job (MPI_Abort), so that no rank waits forever for it.
 * @example
 * // mpirun -np 2 node train.js
 * const job = duat.distributed.init();          // { rank: 0 | 1, size: 2, transport: 'Open MPI v4.1.4' }
 * const sums = duat.distributed.allreduce(Float64Array.of(job.rank));   // [1] on both ranks
 */
import { ArgumentError } from './errors';
import { native, NativeDistributedInfo } from './native';
import { Tensor } from './tensor';
import { checkInt, checkOptions, describe } from './validate';

/** The job this process belongs to. */
export type DistributedInfo = NativeDistributedInfo;

/** Options of {@link init}. */
export interface InitOptions {
  /** The MPI library to load. Default: the DUAT_MPI_LIBRARY environment variable, then libmpi.so.40, then libmpi.so. */
  library?: string;
}

let exitHookInstalled = false;

/**
 * Joins the MPI job this process was started in (a process started without mpirun is a job of
 * one). Idempotent: later calls return the same job. MPI is finalized when the process exits
 * with code 0; a nonzero exit aborts the job.
 * @throws DistributedError when no usable MPI can be loaded, saying what to install
 */
export function init(options?: InitOptions): DistributedInfo {
  const o = checkOptions<InitOptions>(options, 'distributed.init options');
  if (o.library !== undefined && typeof o.library !== 'string') {
    throw new ArgumentError(`Expected a path for library but received ${describe(o.library)}`);
  }
  const job = native().distributedInit(o.library);
  if (!exitHookInstalled) {
    exitHookInstalled = true;
    // A clean exit leaves the job; a failing one ends it, so that no rank is left waiting in a
    // collective for this one (finalizing would wait for them instead).
    process.once('exit', (code) => {
      if (native().distributedInfo() === null) return;
      if (code === 0) native().distributedFinalize();
      else native().distributedAbort(Math.min(255, Math.max(1, code)));
    });
  }
  return job;
}

/** The job, or null before {@link init}. */
export function info(): DistributedInfo | null {
  return native().distributedInfo();
}

/**
 * What this rank's collectives have carried since {@link init}: calls, the bytes it sent into
 * them, and the seconds spent inside them (waiting for the other ranks included).
 * @throws DistributedError without a job
 */
export function stats(): { calls: number; bytes: number; seconds: number } {
  return native().distributedStats();
}

/** This process's rank: 0 without a job. */
export function rank(): number {
  return info()?.rank ?? 0;
}

/** The number of processes in the job: 1 without one. */
export function size(): number {
  return info()?.size ?? 1;
}

/** Whether this process writes files and prints progress: rank 0, or any process without a job. */
export function isMain(): boolean {
  return rank() === 0;
}

/**
 * Sums `data` over every rank, in place, and returns it: a Float32Array, a Float64Array, or a
 * float32 tensor (on its device).
 */
export function allreduce<T extends Float32Array | Float64Array | Tensor>(data: T): T {
  if (data instanceof Tensor) native().distributedAllreduceTensor(data.handle);
  else if (data instanceof Float32Array || data instanceof Float64Array) native().distributedAllreduce(data);
  else throw new ArgumentError(`Expected a Float32Array, Float64Array or tensor but received ${describe(data)}`);
  return data;
}

/** Copies rank `root`'s bytes of `data` into every rank's `data`, in place, and returns it. */
export function broadcast<T extends ArrayBufferView>(data: T, root = 0): T {
  if (!ArrayBuffer.isView(data)) throw new ArgumentError(`Expected a typed array but received ${describe(data)}`);
  return native().distributedBroadcast(data, checkInt(root, 'root', 0, size() - 1));
}

/** Waits until every rank has called it. */
export function barrier(): void {
  native().distributedBarrier();
}

/** Ends every process of the job with `code` (1 to 255): an error on one rank must not leave the others waiting. */
export function abort(code = 1): never {
  return native().distributedAbort(checkInt(code, 'code', 1, 255));
}

/** Leaves the job (done at exit by itself); no collective may follow, nor another init. */
export function finalize(): void {
  native().distributedFinalize();
}

/** The share of `branches` branches that `rank` of `size` holds in branch-parallel training: the first `branches % size` ranks hold one more. */
export function branchShare(branches: number, rank: number, size: number): { offset: number; count: number } {
  return native().distributedBranchShare(branches, rank, size);
}
