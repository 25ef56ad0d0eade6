/** Optimisers and gradient clipping. */
export { clipGradNorm, Optimizer } from './Optimizer';
export type { ParamGroup } from './Optimizer';
export { AdamW, SGD } from './optimizers';
export type { AdamWOptions, SGDOptions } from './optimizers';
