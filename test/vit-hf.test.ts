/**
 * loadViT reads Hugging Face ViTs: a ViTForImageClassification made by transformers
 * (test/fixtures/make_hf_fixtures.py), as save_pretrained's folder, its weights file, or in
 * shards with an index; eps, heads and labels from config.json, normalisation from
 * preprocessor_config.json; what does not fit is refused naming the file.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { PNG } from 'pngjs';

import * as duat from '../lib';

const ONE = path.join(__dirname, 'fixtures', 'hf-vit'), SHARDED = path.join(__dirname, 'fixtures', 'hf-vit-sharded');
const ref = JSON.parse(fs.readFileSync(path.join(ONE, 'reference.json'), 'utf8')) as { images: number[]; shape: number[]; logits: number[]; classNames: string[]; eps: number };
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-hf-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

const worst = (model: duat.ParaFormer) => {
  const z = duat.noGrad(() => duat.tidy(() => Array.from(model.forward(duat.tensor(Float32Array.from(ref.images), ref.shape)).toArray())));
  return Math.max(...z.map((v, i) => Math.abs(v - ref.logits[i])));
};

/** A copy of the one-file folder with its files changed by `edit`. */
function variant(name: string, edit: (dir: string) => void): string {
  const dir = path.join(tmp, name);
  fs.cpSync(ONE, dir, { recursive: true });
  edit(dir);
  return dir;
}

test.each([
  ['the save_pretrained folder', ONE],
  ['its model.safetensors', path.join(ONE, 'model.safetensors')],
  ['the sharded folder', SHARDED],
  ['the shards\' index', path.join(SHARDED, 'model.safetensors.index.json')],
])("%s loads with transformers' logits, eps 1e-12 and the labels from config.json", (_, p) => {
  const model = duat.loadViT(p);
  expect(ref.eps).toBe(1e-12);
  expect(model.config).toMatchObject({ eps: 1e-12, heads: 2, depth: 3, branches: 1, dim: 16, classes: 4, imageSize: 28, patchSize: 7 });
  // 1e-4 is the contract; the fit is closer than eps 1e-6 would allow (4.5e-6).
  expect(worst(model)).toBeLessThan(1e-6);
  expect(model.inputSpec).toEqual({ mean: [0.25], std: [0.4], classNames: ref.classNames });
  model.dispose();
});

test('the eps option overrides config.json, and a saved model keeps its eps', () => {
  const model = duat.loadViT(ONE, { eps: 1e-6 });
  expect(model.config.eps).toBe(1e-6);
  expect(worst(model)).toBeGreaterThan(1e-6);
  const file = path.join(tmp, 'saved.safetensors');
  const hf = duat.loadViT(ONE);
  duat.save(file, hf);
  const back = duat.load(file);
  expect(back.config.eps).toBe(1e-12);
  expect(back.inputSpec?.classNames).toEqual(ref.classNames);
  expect(worst(back)).toBeLessThan(1e-6);
  for (const m of [model, hf, back]) m.dispose();
});

test('as a Para-Former-1-3, and with a fresh head for other classes (the labels then dropped)', () => {
  const pf = duat.loadViT(ONE, { depth: 1, branches: 3 });
  expect([pf.config.depth, pf.config.branches]).toEqual([1, 3]);
  const other = duat.loadViT(ONE, { classes: 7 });
  expect(other.config.classes).toBe(7);
  expect(other.inputSpec).toEqual({ mean: [0.25], std: [0.4] });
  pf.dispose();
  other.dispose();
});

describe('refused, naming the file', () => {
  test('a folder without weights, and a path that is not there', () => {
    fs.mkdirSync(path.join(tmp, 'empty'));
    expect(() => duat.loadViT(path.join(tmp, 'empty'))).toThrow(/a folder without model\.safetensors or model\.safetensors\.index\.json/);
    expect(() => duat.loadViT(path.join(tmp, 'nowhere'))).toThrow(duat.CheckpointError);
  });

  test('an activation or a model type duat does not compute', () => {
    const edit = (key: string, value: unknown) => (dir: string) => {
      const f = path.join(dir, 'config.json');
      fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(fs.readFileSync(f, 'utf8')), [key]: value }));
    };
    expect(() => duat.loadViT(variant('relu', edit('hidden_act', 'relu')))).toThrow(/hidden_act "relu"; duat's MLP uses the exact \(erf\) GELU/);
    expect(() => duat.loadViT(variant('bert', edit('model_type', 'bert')))).toThrow(/model_type "bert"/);
    expect(() => duat.loadViT(variant('eps', edit('layer_norm_eps', -1)))).toThrow(/layer_norm_eps -1/);
    fs.writeFileSync(path.join(variant('notjson', () => undefined), 'config.json'), '{ not json');
    expect(() => duat.loadViT(path.join(tmp, 'notjson'))).toThrow(/config\.json: not JSON/);
  });

  test('a tensor with no place (a pooler) and a block without its query', () => {
    const pooled = variant('pooler', (dir) => {
      const { tensors } = duat.loadSafetensors(path.join(dir, 'model.safetensors'));
      duat.saveSafetensors(path.join(dir, 'model.safetensors'), [...tensors, ['vit.pooler.dense.weight', duat.ones([16, 16])]]);
    });
    expect(() => duat.loadViT(pooled)).toThrow(/'vit\.pooler\.dense\.weight'/);
    const noQuery = variant('noquery', (dir) => {
      const { tensors } = duat.loadSafetensors(path.join(dir, 'model.safetensors'));
      duat.saveSafetensors(path.join(dir, 'model.safetensors'), [...tensors].filter(([n]) => n !== 'vit.encoder.layer.1.attention.attention.query.weight'));
    });
    expect(() => duat.loadViT(noQuery)).toThrow(/block 1 lacks one of query, key and value weights/);
  });

  test("shards that do not match their index", () => {
    const dir = path.join(tmp, 'shards');
    fs.cpSync(SHARDED, dir, { recursive: true });
    const index = path.join(dir, 'model.safetensors.index.json');
    const original = JSON.parse(fs.readFileSync(index, 'utf8'));
    const write = (map: Record<string, string>) => fs.writeFileSync(index, JSON.stringify({ ...original, weight_map: map }));
    const [first] = Object.keys(original.weight_map);
    write({ ...original.weight_map, [first]: '../elsewhere.safetensors' });
    expect(() => duat.loadViT(dir)).toThrow(/not a file beside the index/);
    write({ ...original.weight_map, 'vit.extra': original.weight_map[first] });
    expect(() => duat.loadViT(dir)).toThrow(/lists 'vit\.extra' in it, but it is not there/);
    const moved = Object.fromEntries(Object.entries(original.weight_map as Record<string, string>).filter(([n]) => n !== first));
    write(moved);
    expect(() => duat.loadViT(dir)).toThrow(new RegExp(`holds '${first.replace(/\./g, '\\.')}', which model\\.safetensors\\.index\\.json does not list`));
    write(original.weight_map);
    fs.rmSync(path.join(dir, 'model-00002-of-00003.safetensors'));
    expect(() => duat.loadViT(dir)).toThrow(duat.CheckpointError);
  });
});

describe('fine-tuning from the CLI: duat train --data folder:PATH --init', () => {
  const CLI = path.join(__dirname, '..', 'lib', 'cli.ts');
  const run = (args: string[]) => spawnSync(process.execPath, ['-r', require.resolve('ts-node/register/transpile-only'), CLI, ...args], {
    cwd: tmp, encoding: 'utf8', env: { ...process.env, DUAT_NUM_THREADS: '2', TS_NODE_PROJECT: path.join(__dirname, '..', 'tsconfig.json') },
  });

  /** PNGs of bright squares and circles on a dark ground, 24 x 24 RGB, `n` of each. */
  function shapes(dir: string, n: number): void {
    let s = 7;
    const rnd = () => (s = (s * 16807) % 2147483647) / 2147483647;
    for (const cls of ['circle', 'square']) {
      fs.mkdirSync(path.join(dir, cls), { recursive: true });
      for (let i = 0; i < n; i++) {
        const png = new PNG({ width: 24, height: 24 });
        const cx = 8 + rnd() * 8, cy = 8 + rnd() * 8, r = 4 + rnd() * 3;
        for (let y = 0; y < 24; y++)
          for (let x = 0; x < 24; x++) {
            const inside = cls === 'circle' ? (x - cx) ** 2 + (y - cy) ** 2 < r * r : Math.abs(x - cx) < r && Math.abs(y - cy) < r;
            const k = (y * 24 + x) * 4;
            png.data[k] = png.data[k + 1] = png.data[k + 2] = inside ? 230 : 20 + rnd() * 30;
            png.data[k + 3] = 255;
          }
        fs.writeFileSync(path.join(dir, cls, `${i}.png`), PNG.sync.write(png));
      }
    }
  }

  test('a Hugging Face ViT fine-tuned as a Para-Former-1-3 on a folder; predict prints the folder\'s class names', () => {
    const dir = path.join(tmp, 'shapes');
    shapes(dir, 15);
    const r = run(['train', '--data', `folder:${dir}`, '--init', ONE, '--depth', '1', '--branches', '3', '--epochs', '2', '--batch-size', '8',
      '--warmup-steps', '2', '--val-fraction', '0.2', '--name', 'ft', '--progress-every', '0']);
    expect(r.stderr).not.toMatch(/Error/);
    expect(r.status).toBe(0);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(summary.model).toBe('Para-Former-1-3');
    const modelFile = path.resolve(tmp, summary.modelFile);
    const model = duat.load(modelFile);
    // The head was made anew for the folder's 2 classes; normalisation and names are the data's.
    expect(model.config).toMatchObject({ classes: 2, eps: 1e-12, depth: 1, branches: 3, imageSize: 28, channels: 1 });
    expect(model.inputSpec).toEqual({ mean: [0.25], std: [0.4], classNames: ['circle', 'square'] });
    const conf = JSON.parse(fs.readFileSync(path.join(tmp, 'runs', 'ft', 'confusion.json'), 'utf8')) as number[][];
    expect(conf.flat().reduce((a, b) => a + b, 0)).toBe(6);  // 20% of each class held out
    model.dispose();
    // Resumed, the folder's images are made the way the run's model reads them (28 x 28 grey).
    const resumed = run(['train', '--resume', path.join(tmp, 'runs', 'ft'), '--epochs', '3', '--progress-every', '0']);
    expect(resumed.stderr).not.toMatch(/Error/);
    expect(JSON.parse(resumed.stdout.trim().split('\n').pop()!).steps).toBeGreaterThan(summary.steps);
    const p = run(['predict', path.join(dir, 'square', '0.png'), '--model', modelFile]);
    expect(p.status).toBe(0);
    expect(['circle', 'square']).toContain(JSON.parse(p.stdout).prediction);
    // A duat model takes no shape flags; a folder without class subfolders is a DataError.
    expect(run(['train', '--data', `folder:${dir}`, '--init', modelFile, '--depth', '2', '--name', 'x']).stderr).toMatch(/--depth cannot be given with --init/);
    fs.mkdirSync(path.join(tmp, 'flat'));
    expect(run(['train', '--data', `folder:${path.join(tmp, 'flat')}`, '--name', 'y']).stderr).toMatch(/DataError: .*flat: no class subfolders/);
  });

  test('data.split holds out each class\'s share; loadImageFolder normalises per channel', () => {
    const dir = path.join(tmp, 'shapes-split');
    shapes(dir, 10);
    const ds = duat.data.loadImageFolder(dir, { size: 8, channels: 3, mean: [0.1, 0.2, 0.3], std: [1, 2, 4] });
    expect([ds.mean, ds.std]).toEqual([[0.1, 0.2, 0.3], [1, 2, 4]]);
    const raw = duat.data.prepareImage(duat.data.readImage(path.join(dir, 'circle', '0.png')), 3, 8);
    expect(ds.images[64 + 5]).toBeCloseTo((raw[64 + 5] - 0.2) / 2, 6);
    const { train, test } = duat.data.split(ds, 0.3, 1);
    expect([train.count, test.count]).toEqual([14, 6]);
    expect(Array.from(test.labels).filter((l) => l === 0).length).toBe(3);
    expect(() => duat.data.split(ds, 1)).toThrow(/fraction in \(0, 1\)/);
    expect(() => duat.data.loadImageFolder(dir, { size: 8, channels: 3, mean: [0.1, 0.2] })).toThrow(/mean to be one number or 3/);
  });
});
