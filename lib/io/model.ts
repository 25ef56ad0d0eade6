/** Model checkpoints: safetensors with the model config in `__metadata__`; loading timm ViTs. */
import { ArgumentError, CheckpointError } from '../errors';
import { checkInputSpec, InputSpec, ParaFormer, ParaFormerConfig } from '../nn/ParaFormer';
import { concat } from '../functional';
import { native } from '../native';
import { Tensor } from '../tensor';
import { checkInt, checkOptions, describe } from '../validate';
import { checkPath } from './files';
import { readViTFiles } from './huggingface';
import { loadSafetensors, saveSafetensors } from './safetensors';

/** Saves a model (parameters and config) to a safetensors file, atomically. */
export function save(file: string, model: ParaFormer): void {
  checkPath(file);
  if (!(model instanceof ParaFormer)) throw new ArgumentError(`Expected a ParaFormer for model but received ${describe(model)}`);
  saveSafetensors(file, model.namedParameters(), { format: 'duat-model', config: JSON.stringify(model.config), ...inputMetadata(model) });
}

/** The `input` metadata entry of a model with an input spec (normalisation and class names). */
export function inputMetadata(model: ParaFormer): { input?: string } {
  const spec = model.inputSpec;
  return spec ? { input: JSON.stringify(spec) } : {};
}

/**
 * The input spec a file's `input` metadata entry holds, checked against the model config;
 * undefined where the file has none.
 * @throws CheckpointError naming the file when the entry is not a valid spec
 */
export function readInputSpec(file: string, metadata: Record<string, string>, config: ParaFormerConfig): InputSpec | undefined {
  if (metadata.input === undefined) return undefined;
  try {
    return checkInputSpec(JSON.parse(metadata.input), config, 'input');
  } catch (e) {
    throw new CheckpointError(`${file}: the saved input spec is not valid: ${(e as Error).message}`);
  }
}

const sameShape = (a: number[], b: number[]) => a.length === b.length && a.every((d, i) => d === b[i]);

/**
 * Loads a model saved by save() (or the model part of a training checkpoint). The file's tensors
 * are checked against the model its config describes before the model is made: every parameter
 * present with its shape, nothing else but optimizer state and training records.
 * @throws CheckpointError naming the file and what does not fit
 */
export function load(file: string): ParaFormer {
  checkPath(file);
  const { tensors, metadata } = loadSafetensors(file);
  try {
    let config: ParaFormerConfig;
    try {
      config = JSON.parse(metadata.config ?? '');
    } catch {
      throw new CheckpointError(`${file}: no model config in the metadata (was it written by duat.save?)`);
    }
    let spec: { name: string; shape: number[] }[];
    try {
      spec = ParaFormer.parameterSpec(config);
    } catch (e) {
      throw new CheckpointError(`${file}: the saved config is not valid: ${(e as Error).message}`);
    }
    const names = new Set(spec.map((p) => p.name));
    for (const { name, shape } of spec) {
      const t = tensors.get(name);
      if (!t) throw new CheckpointError(`${file}: missing parameter '${name}'`);
      if (t.dtype !== 'float32' || !sameShape(t.shape, shape)) {
        throw new CheckpointError(`${file}: parameter '${name}' has shape [${t.shape.join(', ')}] but the config needs [${shape.join(', ')}]`);
      }
    }
    for (const name of tensors.keys()) {
      if (!names.has(name) && !name.startsWith('optimizer.') && !name.startsWith('train.')) {
        throw new CheckpointError(`${file}: unexpected tensor '${name}' (not a parameter of the saved model)`);
      }
    }
    const input = readInputSpec(file, metadata, ParaFormer.resolveConfig(config));
    const model = new ParaFormer(config);
    model.inputSpec = input;
    model.loadStateDict(new Map([...tensors].filter(([n]) => names.has(n))));
    return model;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** Options of {@link loadViT}. */
export interface LoadViTOptions {
  /** m: stages of the Para-Former built from the ViT's blocks. Default: the ViT's depth. */
  depth?: number;
  /** n: branches per stage; blocks i maps to branch i mod n of stage floor(i / n). Default 1. */
  branches?: number;
  /** Replace the head for this many classes (fresh head); needed for a file without a head. */
  classes?: number;
  /** Image size of the new model; pos_embed is interpolated when the patch grid differs. */
  imageSize?: number;
  /** Image channels. Default: the checkpoint's. */
  channels?: number;
  /** Attention heads (timm files do not record them). Default: config.json's, else dim / 64. */
  heads?: number;
  /** LayerNorm epsilon. Default: config.json's layer_norm_eps beside the weights, else 1e-6 (timm's). */
  eps?: number;
}

/**
 * Loads a timm ViT safetensors file (names `blocks.i.*`, `patch_embed.proj.*`, `cls_token`,
 * `pos_embed`, `norm.*`, `head.*`; float32, float16 or bfloat16) as a Para-Former for
 * fine-tuning, or a Hugging Face `ViTForImageClassification` (`save_pretrained`'s folder, its
 * model.safetensors, or a sharded checkpoint's index): query, key and value are fused, and
 * config.json gives the LayerNorm eps (1e-12 there), the heads and the class names,
 * preprocessor_config.json the normalisation (kept as the model's {@link ParaFormer.inputSpec}). The ViT variants of pretrained checkpoints are read into the model's config:
 * LayerScale (`blocks.i.ls1.gamma`, DeiT-III, DINOv2), a pre-norm (`norm_pre.*`) and a patch
 * embedding without bias (CLIP image towers), global average pooling into `fc_norm`. Strict:
 * every tensor of the file is used, or the load fails naming what has no place (register tokens,
 * normalised queries and keys...), since leaving one out would give other logits. A file without
 * a head (a backbone) loads with a fresh head for `classes`.
 * @throws CheckpointError naming the file and what does not fit
 */
export function loadViT(file: string, options?: LoadViTOptions): ParaFormer {
  checkPath(file);
  const o = checkOptions<LoadViTOptions>(options, 'loadViT options');
  const files = readViTFiles(file);
  const { tensors } = files;
  file = files.source;
  try {
    const get = (n: string) => {
      const t = tensors.get(n);
      if (!t) throw new CheckpointError(`${file}: missing '${n}' (not a timm ViT checkpoint?)`);
      return t;
    };
    const patch = get('patch_embed.proj.weight');
    const [C, ch, P] = patch.shape;
    let blocks = 0;
    while (tensors.has(`blocks.${blocks}.attn.qkv.weight`)) blocks++;
    if (blocks === 0) throw new CheckpointError(`${file}: no blocks.0.attn.qkv.weight`);
    const n = checkInt(o.branches ?? 1, 'branches', 1, blocks);
    const m = checkInt(o.depth ?? Math.ceil(blocks / n), 'depth', 1, 4096);
    if (m * n !== blocks) throw new ArgumentError(`depth ${m} x branches ${n} must equal the ViT's ${blocks} blocks`);
    const heads = checkInt(o.heads ?? files.heads ?? Math.max(1, Math.round(C / 64)), 'heads', 1, C);
    const pos = get('pos_embed');
    const grid = Math.round(Math.sqrt(pos.shape[1] - 1));
    // A backbone without a classifier (DINO, MAE) takes a fresh head for `classes`.
    const head = tensors.get('head.weight');
    if (!head && o.classes === undefined) throw new CheckpointError(`${file}: no 'head.weight' (a backbone without a classifier): pass classes to make a fresh head`);
    const classes = o.classes ?? head!.shape[0];
    const M = get('blocks.0.mlp.fc1.weight').shape[0];
    // The variant, from the names the file has.
    const layerScale = tensors.has('blocks.0.ls1.gamma'), preNorm = tensors.has('norm_pre.weight');
    const patchBias = tensors.has('patch_embed.proj.bias'), avg = tensors.has('fc_norm.weight');
    const finalNorm = avg ? 'fc_norm' : 'norm';
    const imageSize = checkInt(o.imageSize ?? grid * P, 'imageSize', 1, 1 << 20);
    // Every tensor the model takes, checked against the sizes above before anything is made.
    const used = new Set<string>();
    const want = (name: string, shape: number[]) => {
      const t = get(name);
      used.add(name);
      if (t.dtype !== 'float32') throw new CheckpointError(`${file}: '${name}' is ${t.dtype}; loadViT reads float tensors (F32, F16 or BF16)`);
      if (!sameShape(t.shape, shape)) {
        throw new CheckpointError(`${file}: '${name}' has shape [${t.shape.join(', ')}] but a ViT of width ${C} needs [${shape.join(', ')}]`);
      }
    };
    if (C < 1 || ch < 1 || P < 1 || M < 1 || (head && head.shape[0] < 1) || grid * grid + 1 !== pos.shape[1]) {
      throw new CheckpointError(`${file}: empty or inconsistent sizes (width ${C}, channels ${ch}, patch ${P}, MLP ${M}, ${pos.shape[1]} positions)`);
    }
    want('patch_embed.proj.weight', [C, ch, P, P]);
    if (patchBias) want('patch_embed.proj.bias', [C]);
    want('cls_token', [1, 1, C]);
    want('pos_embed', [1, grid * grid + 1, C]);
    if (preNorm) ['norm_pre.weight', 'norm_pre.bias'].forEach((k) => want(k, [C]));
    want(`${finalNorm}.weight`, [C]);
    want(`${finalNorm}.bias`, [C]);
    if (head) {
      want('head.weight', [head.shape[0], C]);
      want('head.bias', [head.shape[0]]);
    }
    for (let i = 0; i < blocks; i++) {
      const b = `blocks.${i}.`;
      for (const k of ['norm1.weight', 'norm1.bias', 'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc2.bias']) want(b + k, [C]);
      want(b + 'attn.qkv.weight', [3 * C, C]);
      want(b + 'attn.qkv.bias', [3 * C]);
      want(b + 'attn.proj.weight', [C, C]);
      want(b + 'mlp.fc1.weight', [M, C]);
      want(b + 'mlp.fc1.bias', [M]);
      want(b + 'mlp.fc2.weight', [C, M]);
      if (layerScale) ['ls1.gamma', 'ls2.gamma'].forEach((k) => want(b + k, [C]));
    }
    // Nothing in the file may go unused: a tensor duat has no place for changes what the ViT
    // computes, and ignoring it would load a model that gives other logits.
    const unused = [...tensors.keys()].filter((k) => !used.has(k));
    if (unused.length > 0) {
      const hint = (k: string) =>
        /\.ls[12]\.(gamma|scale)$/.test(k) ? 'LayerScale in some blocks only'
          : /^norm\./.test(k) && avg ? 'a norm before average pooling as well as fc_norm'
            : /^(reg_token|dist_token|head_dist)/.test(k) ? 'register or distillation tokens'
              : /q_norm|k_norm/.test(k) ? 'normalised queries and keys' : '';
      const named = unused.slice(0, 4).map((k) => `'${k}'${hint(k) ? ` (${hint(k)})` : ''}`).join(', ');
      throw new CheckpointError(
        `${file}: ${unused.length} tensor${unused.length > 1 ? 's' : ''} of this ViT ha${unused.length > 1 ? 've' : 's'} no place in a Para-Former: ` +
          `${named}${unused.length > 4 ? ', ...' : ''}. Loading without ${unused.length > 1 ? 'them' : 'it'} would give other logits, so the file is refused.`,
      );
    }
    const model = new ParaFormer({
      imageSize, patchSize: P, channels: o.channels ?? ch, classes,
      dim: C, heads, depth: m, branches: n, mlpRatio: M / C,
      layerScale: layerScale ? 1 : 0, preNorm, patchBias, pool: avg ? 'avg' : 'token', eps: o.eps ?? files.eps,
    });
    const made: Tensor[] = [];  // every tensor made here is freed here, whatever happens
    try {
      const sd = new Map<string, Tensor>();
      const kinds = ['norm1.weight', 'norm1.bias', 'attn.qkv.weight', 'attn.qkv.bias', 'attn.proj.weight', 'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight', 'mlp.fc2.bias'];
      if (layerScale) kinds.push('ls1.gamma', 'ls2.gamma');
      for (let s = 0; s < m; s++)
        for (const k of kinds) {
          const views = Array.from({ length: n }, (_, b) => get(`blocks.${s * n + b}.${k}`)).map((t) => t.reshape([1, ...t.shape]));
          made.push(...views);
          const stacked = concat(views, 0);
          made.push(stacked);
          sd.set(`stages.${s}.${k}`, stacked);
        }
      for (const k of ['patch_embed.proj.weight', 'cls_token', `${finalNorm}.weight`, `${finalNorm}.bias`]) sd.set(k, get(k));
      if (patchBias) sd.set('patch_embed.proj.bias', get('patch_embed.proj.bias'));
      if (preNorm) for (const k of ['norm_pre.weight', 'norm_pre.bias']) sd.set(k, get(k));
      const newGrid = imageSize / P;
      sd.set('pos_embed', newGrid === grid ? pos : interpolatePos(pos, grid, newGrid, made));
      const own = new Map(model.namedParameters());
      if (head && classes === head.shape[0]) {
        sd.set('head.weight', head);
        sd.set('head.bias', get('head.bias'));
      } else {
        sd.set('head.weight', own.get('head.weight')!);
        sd.set('head.bias', own.get('head.bias')!);
      }
      model.loadStateDict(sd);
      // A Hugging Face folder's preprocessing and label names go with the model.
      if (files.mean && files.std && [1, model.config.channels].includes(files.mean.length) && [1, model.config.channels].includes(files.std.length)) {
        const kept = head && classes === head.shape[0] && files.classNames?.length === classes ? { classNames: files.classNames } : {};
        model.inputSpec = { mean: files.mean, std: files.std, ...kept };
      }
    } catch (e) {
      model.dispose();
      throw e;
    } finally {
      for (const t of made) t.dispose();
    }
    return model;
  } finally {
    for (const t of tensors.values()) t.dispose();
  }
}

/** Bilinear interpolation of a (1, 1 + g*g, C) position table to a (1, 1 + G*G, C) one (class token kept). */
function interpolatePos(pos: Tensor, g: number, G: number, made: Tensor[]): Tensor {
  const C = pos.shape[2];
  const src = pos.toArray();
  const out = new Float32Array((1 + G * G) * C);
  out.set(src.subarray(0, C));
  for (let y = 0; y < G; y++)
    for (let x = 0; x < G; x++) {
      const fy = Math.max(0, ((y + 0.5) * g) / G - 0.5), fx = Math.max(0, ((x + 0.5) * g) / G - 0.5);
      const y0 = Math.min(g - 1, Math.floor(fy)), x0 = Math.min(g - 1, Math.floor(fx));
      const y1 = Math.min(g - 1, y0 + 1), x1 = Math.min(g - 1, x0 + 1);
      const wy = fy - y0, wx = fx - x0;
      for (let c = 0; c < C; c++) {
        const v = (yy: number, xx: number) => src[(1 + yy * g + xx) * C + c];
        out[(1 + y * G + x) * C + c] =
          (1 - wy) * ((1 - wx) * v(y0, x0) + wx * v(y0, x1)) + wy * ((1 - wx) * v(y1, x0) + wx * v(y1, x1));
      }
    }
  const t = new Tensor(native().fromData(out, [1, 1 + G * G, C]));
  made.push(t);
  return t;
}
