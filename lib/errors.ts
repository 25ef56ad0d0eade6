/**
 * Typed errors. Every error duat throws is a {@link DuatError}; its class says what kind of
 * problem it is and its message says what is wrong and where.
 */

/** Base class of every error duat throws. */
export class DuatError extends Error {
  /** A stable machine-readable code, e.g. `'DUAT_SHAPE'`. */
  readonly code: string;
  constructor(message: string, code = 'DUAT_ERROR') {
    super(message);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A value of the wrong kind or out of range (a non-integer size, an unknown option value). */
export class ArgumentError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_ARGUMENT');
  }
}

/** Shapes that do not fit an op, or a malformed shape. */
export class ShapeError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_SHAPE');
  }
}

/** A float32 tensor where an int32 one is needed, or the reverse. */
export class DTypeError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_DTYPE');
  }
}

/** Tensors on different devices, or a device that is not available. */
export class DeviceError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_DEVICE');
  }
}

/** A tensor or model used after `dispose()`. */
export class DisposedError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_DISPOSED');
  }
}

/** An allocation failed. */
export class OutOfMemoryError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_OUT_OF_MEMORY');
  }
}

/** A checkpoint or data file that cannot be read as what it claims to be. */
export class CheckpointError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_CHECKPOINT');
  }
}

/** A data file (IDX, CIFAR, image folder) that is missing, truncated or malformed; names the file. */
export class DataError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_DATA');
  }
}

/** An operation called at the wrong time, e.g. a second backward through a freed graph. */
export class StateError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_STATE');
  }
}

/**
 * Distributed training cannot go on: no usable MPI (the message says what to install), a
 * collective called outside a distributed job, or options that cannot be split over its ranks.
 */
export class DistributedError extends DuatError {
  constructor(message: string) {
    super(message, 'DUAT_DISTRIBUTED');
  }
}

/** Training diverged: a loss or gradient norm that is NaN or infinite. Says at which step. */
export class NumericError extends DuatError {
  /** The training step (counted from 1) whose loss was not finite. */
  readonly step: number;
  constructor(message: string, step: number) {
    super(message, 'DUAT_NUMERIC');
    this.step = step;
  }
}

/** The native addon could not be loaded; the message lists every path tried and how to fix it. */
export class NativeLoadError extends DuatError {
  /** Each candidate path and why it failed. */
  readonly attempts: ReadonlyArray<{ path: string; error: string }>;
  constructor(message: string, attempts: ReadonlyArray<{ path: string; error: string }> = []) {
    super(message, 'DUAT_NATIVE_LOAD');
    this.attempts = attempts;
  }
}

/** The classes native code throws, indexed by its error code (native/core/errors.h). */
export const NATIVE_ERROR_CLASSES = [
  ArgumentError,
  ShapeError,
  DTypeError,
  DeviceError,
  DisposedError,
  OutOfMemoryError,
  CheckpointError,
  StateError,
  DistributedError,
] as const;
