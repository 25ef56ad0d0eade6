/**
 * Where time goes: {@link profile} runs a function with the CPU backend's calls timed by op family.
 */
import { StateError } from './errors';
import { native } from './native';

/** One op family's totals over the profiled run. */
export interface ProfileFamily {
  /** products, attention, norms, gelu, softmax, elementwise, copies, allocation or optimizer. */
  family: string;
  /** Wall seconds inside the family's backend calls. */
  seconds: number;
  /** Share of the run's wall time. */
  share: number;
  calls: number;
  /** Analytic floating-point operations (products and attention; 0 for the others). */
  flops: number;
  /** flops / seconds / 1e9, or 0. */
  gflops: number;
  /**
   * The whole process's minor page faults while the family's calls ran. Not read around
   * allocation calls (0 there): memory faults where it is first written, in the call that writes it.
   */
  pageFaults: number;
  /**
   * The whole process's kernel (system) CPU seconds while the family's calls ran: page faults,
   * zeroing fresh pages (0 for allocation, as pageFaults).
   */
  kernelSeconds: number;
  /**
   * Thread seconds the thread pool left unused while the family's calls ran, summed over its
   * threads: a thread waiting for the last tasks of a parallel region (imbalance), or for the
   * calling thread's serial work. With T threads, T * seconds - idleSeconds of thread time worked.
   */
  idleSeconds: number;
}

export interface ProfileReport {
  /** Wall seconds of the whole run. */
  seconds: number;
  /** Seconds outside every backend call: building the graph, autograd, bindings, JavaScript. */
  outsideSeconds: number;
  /** The process's kernel CPU seconds and minor page faults over the run. */
  kernelSeconds: number;
  pageFaults: number;
  /** Largest first. */
  families: ProfileFamily[];
  /**
   * The products by shape, largest first: "MxNxK", "(xbatch)", "A^T" when A is read down its
   * columns, "B" when B is read as (K, N) rows, and the fused epilogue.
   */
  products: { shape: string; seconds: number; calls: number; flops: number; gflops: number; idleSeconds: number }[];
  /**
   * Every kind of call, largest first: the products by shape, element-wise maps by op and size
   * ("map add+= 3200x192", += when accumulating), reductions by shapes, the other calls by name.
   */
  calls: { label: string; family: string; seconds: number; calls: number; flops: number; gflops: number; idleSeconds: number }[];
}

let running = false;

/**
 * Runs `fn` (awaited when it returns a promise) with every CPU backend call timed by op family,
 * and returns its result with the report. Profiling costs about two system calls per backend
 * call but allocations (which are timed only); CUDA work is not timed. One profile at a time.
 */
export async function profile<T>(fn: () => T | Promise<T>): Promise<{ result: T; report: ProfileReport }> {
  if (running) throw new StateError('profile: another profile is running');
  running = true;
  const n = native();
  n.profileStart();
  let raw;
  let result: T;
  try {
    result = await fn();
  } finally {
    raw = n.profileStop();
    running = false;
  }
  const inside = raw.families.reduce((s, f) => s + f.seconds, 0);
  const calls = raw.calls.map((c) => ({ ...c, gflops: c.seconds > 0 ? c.flops / c.seconds / 1e9 : 0 }));
  const families = raw.families
    .map((f) => ({ ...f, share: raw.seconds > 0 ? f.seconds / raw.seconds : 0, gflops: f.seconds > 0 ? f.flops / f.seconds / 1e9 : 0 }))
    .sort((a, b) => b.seconds - a.seconds);
  return {
    result,
    report: { seconds: raw.seconds, outsideSeconds: Math.max(0, raw.seconds - inside), kernelSeconds: raw.kernelSeconds, pageFaults: raw.pageFaults, families,
      products: calls.filter((c) => c.family === 'products').map(({ label, seconds, calls: n, flops, gflops, idleSeconds }) => ({ shape: label, seconds, calls: n, flops, gflops, idleSeconds })),
      calls,
    },
  };
}
