/** Model building blocks. */
export { Module } from './Module';
export type { StateDict } from './Module';
export { LayerNorm, Linear } from './layers';
export type { LinearOptions } from './layers';
export { ParaFormer, SIZES } from './ParaFormer';
export type { BranchAttention, InputSpec, ParaFormerConfig, ParaFormerOptions, Prediction, SizeName, StepResult, TrainStepOptions } from './ParaFormer';
