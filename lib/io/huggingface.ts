/**
 * ViT checkpoints as loadViT reads them: a timm safetensors file, or a Hugging Face
 * `save_pretrained` folder (one `model.safetensors` or shards with `model.safetensors.index.json`,
 * `config.json`, `preprocessor_config.json`) whose `ViTForImageClassification` names are mapped
 * onto timm's, the separate query, key and value fused into one QKV weight.
 */
import * as fs from 'fs';
import * as path from 'path';

import { CheckpointError } from '../errors';
import { concat } from '../functional';
import { Tensor } from '../tensor';
import { readFileOr } from './files';
import { loadSafetensors } from './safetensors';

/** A ViT checkpoint under timm's names, with what its folder says about it. */
export interface ViTFiles {
  /** The weights file (or index) read. */
  source: string;
  tensors: Map<string, Tensor>;
  /** From config.json: LayerNorm eps, attention heads, class names in class order. */
  eps?: number;
  heads?: number;
  classNames?: string[];
  /** From preprocessor_config.json: per-channel normalisation of pixels in [0, 1]. */
  mean?: number[];
  std?: number[];
}

function readJson(file: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileOr(file, CheckpointError).toString('utf8'));
  } catch (e) {
    throw e instanceof CheckpointError ? e : new CheckpointError(`${file}: not JSON (${(e as Error).message})`);
  }
  if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new CheckpointError(`${file}: not a JSON object`);
  return v as Record<string, unknown>;
}

/** The tensors of a sharded checkpoint: every shard its index names, each tensor where the index says. */
function readShards(index: string): Map<string, Tensor> {
  const map = readJson(index).weight_map;
  if (!map || typeof map !== 'object' || Array.isArray(map)) throw new CheckpointError(`${index}: no weight_map`);
  const byFile = new Map<string, string[]>();
  for (const [name, shard] of Object.entries(map as Record<string, unknown>)) {
    if (typeof shard !== 'string' || shard.includes('/') || shard.includes('\\') || shard.startsWith('.')) {
      throw new CheckpointError(`${index}: weight_map.${name} is ${JSON.stringify(shard)}, not a file beside the index`);
    }
    byFile.set(shard, [...(byFile.get(shard) ?? []), name]);
  }
  const out = new Map<string, Tensor>();
  try {
    for (const [shard, names] of byFile) {
      const file = path.join(path.dirname(index), shard);
      const { tensors } = loadSafetensors(file);
      const listed = new Set(names);
      for (const [name, t] of tensors) {
        if (!listed.has(name)) {
          for (const x of tensors.values()) x.dispose();
          throw new CheckpointError(`${file}: holds '${name}', which ${path.basename(index)} does not list for it`);
        }
        out.set(name, t);
      }
      const missing = names.find((n) => !tensors.has(n));
      if (missing) throw new CheckpointError(`${file}: ${path.basename(index)} lists '${missing}' in it, but it is not there`);
    }
  } catch (e) {
    for (const t of out.values()) t.dispose();
    throw e;
  }
  return out;
}

/** Hugging Face ViT names (the part after `vit.encoder.layer.i.`) -> timm's, but for q, k, v. */
const HF_BLOCK: Record<string, string> = {
  'layernorm_before': 'norm1', 'attention.output.dense': 'attn.proj', 'layernorm_after': 'norm2',
  'intermediate.dense': 'mlp.fc1', 'output.dense': 'mlp.fc2',
};
const HF_SHARED: Record<string, string> = {
  'vit.embeddings.cls_token': 'cls_token', 'vit.embeddings.position_embeddings': 'pos_embed',
  'vit.embeddings.patch_embeddings.projection.weight': 'patch_embed.proj.weight',
  'vit.embeddings.patch_embeddings.projection.bias': 'patch_embed.proj.bias',
  'vit.layernorm.weight': 'norm.weight', 'vit.layernorm.bias': 'norm.bias',
  'classifier.weight': 'head.weight', 'classifier.bias': 'head.bias',
};

/**
 * A `transformers` ViT's tensors under timm's names: query, key and value fused (in that order)
 * into `attn.qkv`. Names with no timm counterpart (a pooler) keep their own, so that loadViT's
 * strictness names them.
 * Disposes `tensors`' fused parts; the result owns every tensor in it.
 */
function fromHuggingFace(tensors: Map<string, Tensor>, file: string): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  const fused = new Set<string>();
  const made: Tensor[] = [];
  try {
    for (const [name, t] of tensors) {
      const shared = HF_SHARED[name];
      const m = /^vit\.encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$/.exec(name);
      if (shared) {
        out.set(shared, t);
      } else if (m && /^attention\.attention\.(query|key|value)$/.test(m[2])) {
        const key = `blocks.${m[1]}.attn.qkv.${m[3]}`;
        if (fused.has(key)) continue;
        fused.add(key);
        const parts = ['query', 'key', 'value'].map((p) => tensors.get(`vit.encoder.layer.${m[1]}.attention.attention.${p}.${m[3]}`));
        if (parts.some((p) => !p)) throw new CheckpointError(`${file}: block ${m[1]} lacks one of query, key and value ${m[3]}s`);
        made.push(concat(parts as Tensor[], 0));
        out.set(key, made[made.length - 1]);
      } else if (m && HF_BLOCK[m[2]]) {
        out.set(`blocks.${m[1]}.${HF_BLOCK[m[2]]}.${m[3]}`, t);
      } else {
        out.set(name, t);
      }
    }
  } catch (e) {
    for (const t of made) t.dispose();
    throw e;
  }
  for (const [name, t] of tensors) if (/\.attention\.attention\.(query|key|value)\./.test(name)) t.dispose();
  return out;
}

/**
 * Reads a ViT checkpoint: a safetensors file, a sharded checkpoint's index, or a folder written
 * by `save_pretrained`; config.json and preprocessor_config.json beside the weights are read
 * when present.
 * @throws CheckpointError naming the file and what is wrong
 */
export function readViTFiles(p: string): ViTFiles {
  let stat: fs.Stats;
  try {
    stat = fs.statSync(p);
  } catch {
    throw new CheckpointError(`${p}: cannot read it (loadViT takes a safetensors file, a sharded checkpoint's index or a save_pretrained folder)`);
  }
  let source = p;
  if (stat.isDirectory()) {
    const single = path.join(p, 'model.safetensors'), index = path.join(p, 'model.safetensors.index.json');
    source = fs.existsSync(single) ? single : index;
    if (!fs.existsSync(source)) throw new CheckpointError(`${p}: a folder without model.safetensors or model.safetensors.index.json`);
  }
  const dir = path.dirname(source);
  const config = fs.existsSync(path.join(dir, 'config.json')) ? readJson(path.join(dir, 'config.json')) : undefined;
  const pre = fs.existsSync(path.join(dir, 'preprocessor_config.json')) ? readJson(path.join(dir, 'preprocessor_config.json')) : undefined;
  const raw = source.endsWith('.index.json') ? readShards(source) : loadSafetensors(source).tensors;
  const hf = raw.has('vit.embeddings.cls_token');
  const out: ViTFiles = { source, tensors: raw };
  try {
    if (hf && config) {
      const cfg = path.join(dir, 'config.json');
      if (config.model_type !== undefined && config.model_type !== 'vit') throw new CheckpointError(`${cfg}: model_type ${JSON.stringify(config.model_type)}; loadViT reads 'vit'`);
      if (config.hidden_act !== undefined && config.hidden_act !== 'gelu') {
        throw new CheckpointError(`${cfg}: hidden_act ${JSON.stringify(config.hidden_act)}; duat's MLP uses the exact (erf) GELU, 'gelu'`);
      }
      const eps = config.layer_norm_eps, heads = config.num_attention_heads;
      if (eps !== undefined && !(typeof eps === 'number' && eps > 0 && eps < 1)) throw new CheckpointError(`${cfg}: layer_norm_eps ${JSON.stringify(eps)} is not a small positive number`);
      if (heads !== undefined && !(Number.isSafeInteger(heads) && (heads as number) > 0)) throw new CheckpointError(`${cfg}: num_attention_heads ${JSON.stringify(heads)} is not a count`);
      out.eps = eps as number | undefined;
      out.heads = heads as number | undefined;
      const labels = config.id2label;
      if (labels && typeof labels === 'object' && !Array.isArray(labels)) {
        const entries = Object.entries(labels as Record<string, unknown>);
        const names = entries.map((_, k) => (labels as Record<string, unknown>)[String(k)]);
        if (names.every((n) => typeof n === 'string')) out.classNames = names as string[];
      }
    }
    if (pre) {
      const values = (v: unknown) => (Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'number' && Number.isFinite(x)) ? (v as number[]) : undefined);
      const mean = values(pre.image_mean), std = values(pre.image_std);
      // transformers scales pixels by rescale_factor (1/255) first: the spec's [0, 1] pixels.
      if (mean && std && pre.do_normalize !== false) Object.assign(out, { mean, std });
    }
    if (hf) out.tensors = fromHuggingFace(raw, source);
  } catch (e) {
    for (const t of raw.values()) t.dispose();
    throw e;
  }
  return out;
}
