#!/usr/bin/env node
/**
 * Seeded fuzzers for every file format duat reads and for its public API.
 *
 *   node scripts/fuzz.js [--cases N] [--seed S] [--targets a,b] [--json out.json]
 *   node scripts/fuzz.js --targets safetensors --case 1234     (replays one case, in this process)
 *
 * Targets: safetensors, model (duat.load), checkpoint (a training checkpoint with optimizer
 * state), idx, cifar, png, jpeg, vit (loadViT), api (random calls with random arguments, some
 * while a training step is in flight). Case i of a target draws everything from (seed, target, i),
 * so any case replays alone. Each target runs in a child process: a crash (a signal, an abort) or a
 * hang (no progress for --hang-ms) costs that child, is recorded with its case number, and the run
 * goes on from the next case. Every case is one of: a typed error (a DuatError), accepted, or an
 * untyped error (anything else thrown: a finding). Memory: the native bytes live at the peak of each
 * case above those live before it, and the child's peak resident set above its resident set
 * before the first case. Every input is under 1 MB. Runs on the compiled library in dist/.
 */
'use strict';
const { fork } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const zlib = require('zlib');

const TARGETS = ['safetensors', 'model', 'checkpoint', 'idx', 'cifar', 'png', 'jpeg', 'vit', 'api'];
const MB = 2 ** 20;

// ---------------------------------------------------------------- randomness -------------------
function hash32(...parts) {
  let h = 0x811c9dc5;
  for (const p of parts) {
    const s = String(p);
    for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
    h = Math.imul(h ^ 0xff, 0x01000193);
  }
  return h >>> 0;
}

/** mulberry32: small, fast, seeded. */
function makeRng(seed) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const r = {
    next,
    int: (n) => Math.floor(next() * n),
    pick: (xs) => xs[Math.floor(next() * xs.length)],
    chance: (p) => next() < p,
  };
  return r;
}

const INTERESTING = [0, 1, -1, 2, 3, 4, 7, 8, 16, 28, 255, 256, 65535, 65536, 2 ** 31 - 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 40,
  2 ** 53, 2 ** 53 + 2, 1e300, -1e300, 0.5, 1.5, -0.0];
const WEIRD_JSON = [...INTERESTING, null, true, false, '1', '', 'F32', [], {}, [1], [1, 2], [-1, 4], [0, 2 ** 40], { a: 1 }];

// ---------------------------------------------------------------- byte mutations ---------------
function mutateBytes(rng, input, rounds = 1 + rng.int(4)) {
  let b = Buffer.from(input);
  for (let k = 0; k < rounds; k++) {
    const at = b.length ? rng.int(b.length) : 0;
    switch (rng.int(8)) {
      case 0: if (b.length) b[at] ^= 1 << rng.int(8); break;
      case 1: if (b.length) b[at] = rng.pick([0, 1, 0x7f, 0x80, 0xff, 0x20, 0x22, 0x7b, 0x7d, 0x2c]); break;
      case 2: b = b.subarray(0, rng.int(b.length + 1)); break;  // truncate
      case 3: b = Buffer.concat([b.subarray(0, at), Buffer.from(Array.from({ length: 1 + rng.int(16) }, () => rng.int(256))), b.subarray(at)]); break;
      case 4: b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(64)))]); break;  // delete
      case 5: {  // a 32-bit interesting value, either byte order
        if (b.length >= 4) {
          const v = rng.pick([0, 1, 0xffffffff, 0x7fffffff, 0x80000000, 0xffff, 0x10000, rng.int(2 ** 32)]) >>> 0;
          const o = rng.int(b.length - 3);
          rng.chance(0.5) ? b.writeUInt32LE(v, o) : b.writeUInt32BE(v, o);
        }
        break;
      }
      case 6: {  // duplicate a range
        const len = 1 + rng.int(Math.min(256, b.length || 1));
        b = Buffer.concat([b.subarray(0, at), b.subarray(at, at + len), b.subarray(at)]);
        break;
      }
      default: b = Buffer.concat([b, Buffer.from(Array.from({ length: rng.int(64) }, () => rng.int(256)))]);
    }
  }
  return b;
}

// ---------------------------------------------------------------- formats ------------------------
function safetensorsBytes(headerText, data, lengthOverride) {
  const h = Buffer.from(headerText);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(lengthOverride ?? h.length));
  return Buffer.concat([len, h, data]);
}

function splitSafetensors(buf) {
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), data: buf.subarray(8 + n) };
}

/** Structural mutations of a safetensors file: its header's fields, names, lengths. */
function mutateSafetensors(rng, buf) {
  if (rng.chance(0.3)) return mutateBytes(rng, buf);
  const { header, data } = splitSafetensors(buf);
  const names = Object.keys(header).filter((k) => k !== '__metadata__');
  let text;
  const name = rng.pick(names);
  const e = header[name];
  switch (rng.int(9)) {
    case 0: e.dtype = rng.pick(['F16', 'F64', 'I64', 'U8', 'BOOL', 'toString', '__proto__', 'constructor', 'I32', 'F32', 3, null]); break;
    case 1: if (Array.isArray(e.shape) && e.shape.length) e.shape[rng.int(e.shape.length)] = rng.pick(WEIRD_JSON); else e.shape = rng.pick(WEIRD_JSON); break;
    case 2: e.data_offsets[rng.int(2)] = rng.pick(WEIRD_JSON); break;
    case 3: { const o = header[rng.pick(names)]; [e.data_offsets, o.data_offsets] = [o.data_offsets, e.data_offsets]; break; }
    case 4: e.shape = [...e.shape, rng.pick([1, 0, 2, 2 ** 31])]; break;
    case 5: header[name] = rng.pick(WEIRD_JSON); break;
    case 6: header.__metadata__ = rng.pick([{ format: 1 }, [], 'x', null, { config: '{' }, { format: 'duat-model', config: '[]' }]); break;
    case 7: {  // a duplicate key
      const raw = JSON.stringify(header);
      text = raw.slice(0, -1) + `,${JSON.stringify(name)}:${JSON.stringify({ ...e, data_offsets: [0, e.data_offsets[1] - e.data_offsets[0]] })}}`;
      break;
    }
    default: delete header[name];
  }
  text ??= JSON.stringify(header);
  const lengthOverride = rng.chance(0.1) ? rng.pick([0, 1, Buffer.byteLength(text) + 1, Buffer.byteLength(text) - 1, 2 ** 32, 2 ** 53]) : undefined;
  return safetensorsBytes(text, rng.chance(0.2) ? mutateBytes(rng, data) : data, lengthOverride);
}

/** Structural mutations of the JSON-valued metadata entries of a duat file. */
function mutateMetadata(rng, buf, keys) {
  const { header, data } = splitSafetensors(buf);
  const meta = header.__metadata__;
  const key = rng.pick(keys);
  let value;
  try {
    value = JSON.parse(meta[key]);
  } catch {
    value = meta[key];
  }
  if (value && typeof value === 'object' && !Array.isArray(value) && rng.chance(0.8)) {
    const k = rng.pick(Object.keys(value));
    value[k] = rng.pick([...WEIRD_JSON, 4096, 65536, 1 << 20, 'mean', 'sum']);
    meta[key] = JSON.stringify(value);
  } else {
    meta[key] = rng.pick(['', '{', 'null', '[]', '1e999', '-1', '12', 'NaN', JSON.stringify(rng.pick(WEIRD_JSON))]);
  }
  return safetensorsBytes(JSON.stringify(header), data);
}

/** Shape mutations of named tensors, keeping the file otherwise well formed (so loaders see it). */
function mutateShapes(rng, buf, pattern) {
  const { header, data } = splitSafetensors(buf);
  const names = Object.keys(header).filter((k) => k !== '__metadata__' && pattern.test(k));
  const name = rng.pick(names);
  const e = header[name];
  const count = e.shape.reduce((a, b) => a * b, 1);
  switch (rng.int(4)) {
    case 0: e.shape = [count]; break;  // same bytes, another shape
    case 1: e.shape = e.shape.length > 1 ? [e.shape[1], e.shape[0], ...e.shape.slice(2)] : [1, count]; break;
    case 2: delete header[name]; return safetensorsBytes(JSON.stringify(header), Buffer.concat([data.subarray(0, e.data_offsets[0]), data.subarray(e.data_offsets[1])]));
    default: e.shape = e.shape.map((d) => (rng.chance(0.3) ? 0 : d)); {
      // Zero-size: the bytes go, every later tensor moves down.
      const cut = e.data_offsets[1] - e.data_offsets[0] - 4 * e.shape.reduce((a, b) => a * b, 1);
      for (const v of Object.values(header)) if (v.data_offsets && v.data_offsets[0] >= e.data_offsets[1]) v.data_offsets = v.data_offsets.map((o) => o - cut);
      const kept = data.subarray(e.data_offsets[0], e.data_offsets[0] + (e.data_offsets[1] - e.data_offsets[0] - cut));
      const out = Buffer.concat([data.subarray(0, e.data_offsets[0]), kept, data.subarray(e.data_offsets[1])]);
      e.data_offsets = [e.data_offsets[0], e.data_offsets[1] - cut];
      return safetensorsBytes(JSON.stringify(header), out);
    }
  }
  return safetensorsBytes(JSON.stringify(header), data);
}

function idxBytes(rng) {
  const type = rng.pick([0x08, 0x08, 0x09, 0x0b, 0x0c, 0x0d, 0x0e, 0x07, 0xff]);
  const ndim = rng.pick([1, 2, 3, 3, 0, 4, 255]);
  const dims = Array.from({ length: Math.min(ndim, 8) }, () => rng.pick([0, 1, 2, 3, 10, 28, 28, 2 ** 31, 2 ** 32 - 1]));
  const head = Buffer.alloc(4 + 4 * dims.length);
  head[2] = type;
  head[3] = ndim;
  dims.forEach((d, i) => head.writeUInt32BE(d >>> 0, 4 + 4 * i));
  const count = dims.reduce((a, b) => a * b, 1);
  const size = { 0x08: 1, 0x09: 1, 0x0b: 2, 0x0c: 4, 0x0d: 4, 0x0e: 8 }[type] ?? 1;
  const want = count * size;
  const len = want <= 4096 ? want + rng.pick([0, 0, 0, -1, 1, 7]) : rng.int(4096);
  const body = Buffer.from(Array.from({ length: Math.max(0, len) }, () => rng.int(256)));
  return rng.chance(0.3) ? mutateBytes(rng, Buffer.concat([head, body])) : Buffer.concat([head, body]);
}

function pngChunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(zlib.crc32(td) >>> 0);
  return Buffer.concat([len, td, crc]);
}

/** A PNG built from parts, each open to mutation: dimensions, depth, colour type, IDAT stream. */
function pngBytes(rng) {
  const valid = rng.chance(0.5);  // half start from a well-formed image, so decoding is reached
  const w = valid ? 1 + rng.int(40) : rng.pick([1, 2, 5, 28, 0, 28, 2 ** 31 - 1, 100000, 4097]);
  const h = valid ? 1 + rng.int(40) : rng.pick([1, 3, 28, 0, 28, 2 ** 31 - 1, 100000]);
  const [color, depth] = valid ? rng.pick([[0, 8], [2, 8], [6, 8], [4, 8], [0, 16], [6, 16], [0, 1], [0, 4], [3, 8]])
    : [rng.pick([0, 2, 6, 3, 4, 1, 7]), rng.pick([8, 1, 2, 4, 16, 3, 0])];
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w >>> 0, 0);
  ihdr.writeUInt32BE(h >>> 0, 4);
  ihdr[8] = depth;
  ihdr[9] = color;
  ihdr[12] = valid ? 0 : rng.pick([0, 0, 1, 2]);
  const channels = { 0: 1, 2: 3, 3: 1, 4: 2, 6: 4 }[color] ?? 4;
  const rowBytes = Math.ceil((Math.min(w, 64) * channels * Math.max(depth, 1)) / 8) + 1;
  const raw = Buffer.alloc(rowBytes * Math.min(h, 64));
  for (let i = 0; i < raw.length; i++) raw[i] = i % rowBytes === 0 ? rng.int(5) : rng.int(256);  // filter byte, then pixels
  let idat = zlib.deflateSync(raw);
  if (!valid && rng.chance(0.3)) idat = mutateBytes(rng, idat);
  const chunks = [pngChunk('IHDR', ihdr)];
  if (color === 3 || rng.chance(0.1)) chunks.push(pngChunk('PLTE', Buffer.from(Array.from({ length: 3 * rng.pick([256, 256, 1, 16, 257]) }, () => rng.int(256)))));
  chunks.push(pngChunk('IDAT', idat), pngChunk('IEND', Buffer.alloc(0)));
  const file = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), ...chunks]);
  return rng.chance(valid ? 0.3 : 0.25) ? mutateBytes(rng, file) : file;
}

/** Real JPEGs to start from (encoding one per case would cost most of the run). */
function jpegBases(rng, jpeg) {
  const bases = [];
  for (const side of [1, 8, 17, 32])
    for (const quality of [30, 75, 95]) {
      const rgba = Buffer.alloc(side * side * 4);
      for (let i = 0; i < rgba.length; i++) rgba[i] = rng.int(256);
      bases.push(Buffer.from(jpeg.encode({ data: rgba, width: side, height: side }, quality).data));
    }
  return bases;
}

/** A JPEG: a small real one, then its frame header or bytes mutated. */
function jpegBytes(rng, bases) {
  const file = Buffer.from(rng.pick(bases));
  if (rng.chance(0.4)) {
    for (let at = 2; at + 9 <= file.length; ) {
      const marker = file[at + 1];
      if (marker === 0xc0) {
        file.writeUInt16BE(rng.pick([0, 1, 65535, 30000, 33, 1024]), at + 5);
        file.writeUInt16BE(rng.pick([0, 1, 65535, 30000, 32, 1024]), at + 7);
        if (rng.chance(0.3)) file[at + 9] = rng.pick([0, 1, 2, 3, 4, 255]);  // components
        break;
      }
      at += 2 + file.readUInt16BE(at + 2);
    }
  }
  return rng.chance(0.6) ? mutateBytes(rng, file) : file;
}

// ---------------------------------------------------------------- the child ----------------------
function loadDuat() {
  const dist = path.join(__dirname, '..', 'dist');
  if (!fs.existsSync(path.join(dist, 'index.js'))) throw new Error('dist/ is missing: run npm run build:ts first');
  return { duat: require(dist), fit: require(path.join(dist, 'train', 'fit.js')), native: require(path.join(dist, 'native.js')).native };
}

/** Builds a target's fixtures once; returns run(rng, dir) for one case. */
function makeTarget(name, { duat, fit, native }, dir) {
  const small = { imageSize: 28, patchSize: 7, channels: 1, classes: 10, dim: 16, heads: 2, depth: 1, branches: 2, seed: 1 };
  const file = path.join(dir, 'case.bin');
  const write = (bytes) => {
    if (bytes.length >= MB) throw new Error(`harness: input of ${bytes.length} bytes is over 1 MB`);
    fs.writeFileSync(file, bytes);
    return bytes.length;
  };
  const disposeAll = (m) => m && m.forEach((t) => t.dispose());
  switch (name) {
    case 'safetensors': {
      const ts = [['a', duat.randn([3, 4], { seed: 1 })], ['b', duat.tensor(Int32Array.from([1, 2, 3]), [3])], ['c', duat.zeros([0])], ['d', duat.ones([2, 2, 2])]];
      duat.saveSafetensors(file, ts, { format: 'x', note: 'fuzz' });
      const base = fs.readFileSync(file);
      ts.forEach(([, t]) => t.dispose());
      return (rng) => {
        write(mutateSafetensors(rng, base));
        disposeAll(duat.loadSafetensors(file).tensors);
      };
    }
    case 'model': {
      const m = new duat.ParaFormer(small);
      duat.save(file, m);
      m.dispose();
      const base = fs.readFileSync(file);
      return (rng) => {
        const k = rng.int(3);
        write(k === 0 ? mutateMetadata(rng, base, ['config', 'format']) : k === 1 ? mutateShapes(rng, base, /./) : mutateSafetensors(rng, base));
        duat.load(file).dispose();
      };
    }
    case 'checkpoint': {
      const m = new duat.ParaFormer(small);
      const opt = fit.makeOptimizer(m, { optimizer: 'adamw', lr: 1e-3, weightDecay: 0.05 });
      const x = duat.randn([2, 1, 28, 28], { seed: 2 });
      const options = fit.resolveFitOptions({});
      let base = null;  // made by the first case: a checkpoint with AdamW moments takes a step
      return async (rng) => {
        if (!base) {
          await m.trainStep(x, Int32Array.from([1, 2]), { optimizer: opt });
          fit.saveTrainingState(file, m, opt, { step: 1, epoch: 0, batch: 1 }, options, [2.3]);
          base = fs.readFileSync(file);
        }
        const k = rng.int(4);
        write(k === 0 ? mutateMetadata(rng, base, ['config', 'options', 'position', 'optimizer_steps', 'format'])
          : k === 1 ? mutateShapes(rng, base, /^optimizer\.|^train\./) : k === 2 ? mutateShapes(rng, base, /./) : mutateSafetensors(rng, base));
        fit.loadTrainingState(file, m, opt);
      };
    }
    case 'idx':
      return (rng) => {
        const bytes = idxBytes(rng);
        if (rng.chance(0.5)) {
          duat.data.parseIdx(bytes, 'fuzz.idx');
        } else {
          write(bytes);
          const other = path.join(dir, 'labels.idx');
          fs.writeFileSync(other, idxBytes(rng));
          duat.data.loadIdxDataset(file, other, { limit: rng.chance(0.3) ? rng.pick([0, 1, 5, -1, 1.5]) : undefined });
        }
      };
    case 'cifar':
      return (rng) => {
        const labelBytes = rng.pick([1, 2, 1, 3]);
        const records = rng.pick([0, 1, 2, 3]);
        const rec = (labelBytes === 3 ? 1 : labelBytes) + 3072;
        let bytes = Buffer.from(Array.from({ length: records * rec }, () => rng.int(256)));
        for (let r = 0; r < records; r++) bytes[r * rec + (labelBytes === 2 ? 1 : 0)] = rng.pick([0, 3, 9, 10, 99, 255]);
        if (rng.chance(0.3)) bytes = mutateBytes(rng, bytes);
        write(bytes);
        duat.data.loadCifarBinary([file], { labelBytes: labelBytes === 3 ? rng.pick([0, 3, '1']) : labelBytes });
      };
    case 'png':
      return (rng) => {
        write(pngBytes(rng));
        const img = duat.data.readImage(file);
        if (rng.chance(0.5)) duat.data.prepareImage(img, rng.pick([1, 3]), 28, { invert: rng.chance(0.5) });
      };
    case 'jpeg': {
      const bases = jpegBases(makeRng(7), require('jpeg-js'));
      return (rng) => {
        write(jpegBytes(rng, bases));
        const img = duat.data.readImage(file);
        if (rng.chance(0.5)) duat.data.prepareImage(img, rng.pick([1, 3]), 28, {});
      };
    }
    case 'vit': {
      const m = new duat.ParaFormer({ ...small, depth: 2, branches: 2 });
      duat.tidy(() => {  // the per-block slices are freed with the tidy
        const entries = [];
        for (const [n, p] of m.namedParameters()) {
          const g = /^stages\.(\d+)\.(.*)$/.exec(n);
          if (!g) entries.push([n, p]);  // patch_embed.*, cls_token, pos_embed, norm.*, head.*: timm's names already
          else for (let b = 0; b < 2; b++) entries.push([`blocks.${Number(g[1]) * 2 + b}.${g[2]}`, p.slice(0, b, b + 1).reshape(p.shape.slice(1)).contiguous()]);
        }
        duat.saveSafetensors(file, entries);
      });
      m.dispose();
      const base = fs.readFileSync(file);
      return (rng) => {
        write(rng.chance(0.7) ? mutateShapes(rng, base, /./) : mutateSafetensors(rng, base));
        const opts = rng.chance(0.3) ? { [rng.pick(['depth', 'branches', 'heads', 'imageSize', 'classes', 'channels'])]: rng.pick(WEIRD_JSON) } : undefined;
        duat.loadViT(file, opts).dispose();
      };
    }
    case 'api':
      return makeApiTarget(duat, native, file);
    default:
      throw new Error(`unknown target '${name}'`);
  }
}

/** Random calls of the public API with random arguments; some while a training step is in flight. */
function makeApiTarget(duat, native, file) {
  if (!duat.backendInfo().cuda.available) native().setTestDevice(true);
  const model = new duat.ParaFormer({ imageSize: 28, patchSize: 7, channels: 1, classes: 10, dim: 16, heads: 2, depth: 1, branches: 2 });
  const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
  const smallShape = (rng) => Array.from({ length: rng.int(4) }, () => rng.pick([0, 1, 2, 3, 4, 7]));
  /** Shapes: mostly small; sometimes absurd (refused as a shape or as memory), never a size in between. */
  const shapeArg = (rng) => {
    if (rng.chance(0.8)) return smallShape(rng);
    const s = Array.from({ length: 1 + rng.int(3) }, () => rng.pick([...INTERESTING, NaN, '3', null, -2]));
    const n = s.reduce((a, d) => (typeof d === 'number' ? a * Math.abs(d) : a), 1);
    return n > 2 ** 22 && n < 2 ** 38 ? [2 ** 21, 2 ** 21, 2 ** 21] : s;
  };
  const tensorArg = (rng, pool) => {
    if (pool.length && rng.chance(0.5)) return rng.pick(pool);
    const device = rng.chance(0.3) ? 'cuda' : 'cpu';
    const t = rng.chance(0.2)
      ? duat.tensor(Int32Array.from({ length: 6 }, () => rng.int(12) - 1), [6], { device })
      : duat.randn(smallShape(rng), { seed: rng.int(1000), device });
    if (rng.chance(0.1)) t.dispose();
    pool.push(t);
    return t;
  };
  const anyArg = (rng, pool) => {
    switch (rng.int(9)) {
      case 0: return rng.pick(INTERESTING);
      case 1: return rng.pick([NaN, Infinity, -Infinity, 2 ** 64, -0.5]);
      case 2: return shapeArg(rng);
      case 3: case 4: return tensorArg(rng, pool);
      case 5: return rng.pick(['', 'cpu', 'cuda', 'auto', 'sum', 'mean', 'adamw', 'x'.repeat(100), file, '/dev/zero']);
      case 6: return rng.pick([null, undefined, true, {}, [], () => 1, Symbol('s'), 10n]);
      case 7: return { [rng.pick(['lr', 'device', 'seed', 'labelSmoothing', 'clipGradNorm', 'optimizer', 'requiresGrad', 'weightDecay', 'momentum', 'betas', 'eps', 'transposeOut', 'gelu'])]: rng.pick([...INTERESTING, NaN, 'cuda', null, [0.9, 2], opt, true]) };
      default: return rng.pick([model, opt, model.parameters()[rng.int(model.parameters().length)], Int32Array.from([1, 2]), new Float32Array(3)]);
    }
  };
  const args = (rng, pool, n) => Array.from({ length: n }, () => anyArg(rng, pool));
  const images = duat.randn([2, 1, 28, 28], { seed: 3 });
  const calls = [
    (r, p) => duat.tensor(...args(r, p, 3)),
    (r, p) => duat.zeros(...args(r, p, 2)),
    (r, p) => duat.full(shapeArg(r), ...args(r, p, 2)),
    (r, p) => duat.randn(shapeArg(r), ...args(r, p, 1)),
    (r, p) => duat.rand(shapeArg(r), ...args(r, p, 1)),
    (r, p) => duat.truncNormal(shapeArg(r), ...args(r, p, 1)),
    (r, p) => tensorArg(r, p).reshape(...shapeArg(r)),
    (r, p) => tensorArg(r, p).permute(...args(r, p, 3)),
    (r, p) => tensorArg(r, p).transpose(...args(r, p, 2)),
    (r, p) => tensorArg(r, p).slice(...args(r, p, 3)),
    (r, p) => tensorArg(r, p).sum(...args(r, p, 2)),
    (r, p) => tensorArg(r, p).mean(...args(r, p, 1)),
    (r, p) => tensorArg(r, p).to(anyArg(r, p)),
    (r, p) => tensorArg(r, p).toArray(),
    (r, p) => tensorArg(r, p).item(),
    (r, p) => tensorArg(r, p).backward(),
    (r, p) => tensorArg(r, p).copy_(anyArg(r, p)),
    (r, p) => duat.F[r.pick(Object.keys(duat.F))](...args(r, p, 1 + r.int(6))),
    (r, p) => model.forward(r.chance(0.5) ? images : anyArg(r, p)),
    (r, p) => model.trainStep(r.chance(0.5) ? images : anyArg(r, p), r.chance(0.5) ? Int32Array.from([1, 2]) : anyArg(r, p), r.chance(0.5) ? { optimizer: opt } : anyArg(r, p)),
    (r, p) => model.evaluate(r.chance(0.5) ? images : anyArg(r, p), anyArg(r, p)),
    (r, p) => model.dynamicParameters(r.chance(0.5) ? images : anyArg(r, p)),
    (r, p) => model.loadStateDict(anyArg(r, p)),
    () => model.zeroGrad(),
    () => model.parameters()[0].grad,
    (r) => duat.save(r.chance(0.5) ? file : r.pick(INTERESTING), model),
    (r, p) => duat.load(anyArg(r, p)),
    (r, p) => opt.step(...args(r, p, 1)),
    () => opt.zeroGrad(),
    (r, p) => opt.setLearningRate(anyArg(r, p)),
    (r, p) => new duat.optim.SGD(r.chance(0.5) ? model.parameters() : anyArg(r, p), anyArg(r, p)).dispose(),
    (r, p) => new duat.optim.AdamW(r.chance(0.5) ? [{ params: model.parameters().slice(0, 2), options: anyArg(r, p) }] : anyArg(r, p), anyArg(r, p)).dispose(),
    (r, p) => new duat.ParaFormer(anyArg(r, p)).dispose(),
    (r, p) => duat.setNumThreads(r.chance(0.9) ? 2 : anyArg(r, p)),
    (r, p) => duat.noGrad(() => duat.tidy(() => tensorArg(r, p).add(anyArg(r, p)))),
    (r, p) => tensorArg(r, p).matmul(anyArg(r, p)),
    (r, p) => tensorArg(r, p).mul(anyArg(r, p)),
  ];
  return async (rng) => {
    const pool = [];
    const pending = [];
    let outcome = 'accepted', first;
    const note = (e) => {
      if (!(e instanceof duat.DuatError)) {
        outcome = 'untyped';
        first = e;
      } else if (outcome === 'accepted') {
        outcome = 'typed';
        first ??= e;
      }
    };
    // A training step in flight while the other calls run (they must wait or refuse, never race).
    // Each promise is handled at once (a rejection left for later would be an unhandled one).
    const track = (promise) => pending.push(promise.then((v) => v, (e) => note(e)));
    if (rng.chance(0.3)) track(model.trainStep(images, Int32Array.from([3, 4]), { optimizer: opt }));
    for (let k = 0, n = 1 + rng.int(6); k < n; k++) {
      try {
        const r = rng.pick(calls)(rng, pool);
        if (r && typeof r.then === 'function') track(r);
        else if (r && r instanceof duat.Tensor) pool.push(r);
      } catch (e) {
        note(e);
      }
    }
    for (const v of await Promise.all(pending)) if (v instanceof duat.Tensor) pool.push(v);
    for (const t of pool) if (t instanceof duat.Tensor) t.dispose();
    if (outcome === 'untyped') throw first;
    if (outcome === 'typed') throw first;
  };
}

/** The resident set and its peak (kB) from /proc/self/status; the peak resets with clear_refs 5. */
function rss() {
  const s = fs.readFileSync('/proc/self/status', 'latin1');
  return { now: Number(/VmRSS:\s+(\d+)/.exec(s)[1]), peak: Number(/VmHWM:\s+(\d+)/.exec(s)[1]) };
}
function resetPeakRss() {
  try {
    fs.writeFileSync('/proc/self/clear_refs', '5');
    return true;
  } catch {
    return false;  // not Linux, or not allowed: the per-case RSS figure is then not measured
  }
}

async function child(target, from, to, seed, statusFile, replay) {
  const lib = loadDuat();
  const { duat } = lib;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `duat-fuzz-${target}-`));
  const run = makeTarget(target, lib, dir);
  const status = fs.openSync(statusFile || path.join(dir, 'status'), 'w');
  const counts = { cases: 0, typed: 0, accepted: 0, untyped: 0, errorClasses: {}, untypedExamples: [], maxCaseNativeBytes: 0, maxCaseRssBytes: 0, maxCaseRssAt: -1, keptExamples: [], seconds: 0 };
  const perCaseRss = resetPeakRss();
  const rss0 = process.memoryUsage.rss();
  let peakKb = 0;
  const live0 = duat.memory();
  const t0 = Date.now();
  let lastReport = Date.now();
  for (let i = from; i < to; i++) {
    const pos = Buffer.alloc(8);
    pos.writeDoubleLE(i);
    fs.writeSync(status, pos, 0, 8, 0);
    const rng = makeRng(hash32(seed, target, i));
    duat.resetPeakMemory();
    const before = duat.memory();
    if (perCaseRss) resetPeakRss();
    const rssBefore = perCaseRss ? rss().now : 0;
    try {
      await run(rng);
      counts.accepted++;
    } catch (e) {
      if (e instanceof duat.DuatError) {
        counts.typed++;
        counts.errorClasses[e.name] = (counts.errorClasses[e.name] ?? 0) + 1;
      } else {
        counts.untyped++;
        if (counts.untypedExamples.length < 5) counts.untypedExamples.push({ case: i, error: `${e && e.name}: ${e && e.message}`.slice(0, 300) });
      }
      if (replay) console.log(`case ${i}: ${e && e.name}: ${e && e.message}`);
    }
    const after = duat.memory();
    counts.maxCaseNativeBytes = Math.max(counts.maxCaseNativeBytes, after.peakBytes - before.bytes);
    const kept = after.tensors - before.tensors;  // tensors a case leaves alive (state the target keeps, or a leak)
    if (kept > 0 && counts.keptExamples.length < 5) counts.keptExamples.push({ case: i, tensors: kept });
    if (perCaseRss) {
      const peak = rss().peak;
      peakKb = Math.max(peakKb, peak);  // the run's peak: resetting VmHWM per case also resets getrusage's
      const grew = (peak - rssBefore) * 1024;  // how far the whole process grew during the case
      if (grew > counts.maxCaseRssBytes) counts.maxCaseRssBytes = grew, counts.maxCaseRssAt = i;
    }
    counts.cases++;
    // Back to the event loop now and then, as any program does: Node runs N-API finalizers (the
    // small records behind disposed tensor handles) from there, and a loop that never yields
    // piles them up (about 500 bytes a tensor).
    if (i % 1000 === 999) await new Promise((r) => setImmediate(r));
    if (process.send && Date.now() - lastReport > 1000) {
      lastReport = Date.now();
      process.send({ type: 'progress', at: i + 1, counts });
    }
  }
  counts.seconds = (Date.now() - t0) / 1000;  // (progress reports carry no RSS: that is read at the end)
  counts.rssBeforeMB = rss0 / MB;
  const live1 = duat.memory();  // native tensors left alive by the cases: a leak if it grows
  counts.liveTensorsGrowth = live1.tensors - live0.tensors;
  counts.liveBytesGrowth = live1.bytes - live0.bytes;
  counts.blockCacheMB = duat.cacheInfo().cachedBytes / MB;  // freed blocks kept for reuse (bounded)
  counts.maxRssMB = (perCaseRss ? Math.max(peakKb, rss().peak) : process.resourceUsage().maxRSS) / 1024;
  if (replay) console.log(JSON.stringify(counts) + `\nthe case's input: ${path.join(dir, 'case.bin')}`);
  else fs.rmSync(dir, { recursive: true, force: true });
  if (process.send) process.send({ type: 'done', counts });
}

// ---------------------------------------------------------------- the parent ---------------------
function merge(total, c) {
  for (const k of ['cases', 'typed', 'accepted', 'untyped']) total[k] += c[k];
  for (const [k, v] of Object.entries(c.errorClasses)) total.errorClasses[k] = (total.errorClasses[k] ?? 0) + v;
  total.untypedExamples.push(...c.untypedExamples.slice(0, 5 - total.untypedExamples.length));
  total.keptExamples.push(...c.keptExamples.slice(0, 5 - total.keptExamples.length));
  total.maxCaseNativeBytes = Math.max(total.maxCaseNativeBytes, c.maxCaseNativeBytes);
  total.liveTensorsGrowth += c.liveTensorsGrowth ?? 0;  // (a progress report of a crashed child has none)
  total.liveBytesGrowth += c.liveBytesGrowth ?? 0;
  total.blockCacheMB = Math.max(total.blockCacheMB, c.blockCacheMB ?? 0);
  if (c.maxCaseRssBytes > total.maxCaseRssBytes) total.maxCaseRssBytes = c.maxCaseRssBytes, total.maxCaseRssAt = c.maxCaseRssAt;
  total.maxRssAboveStartMB = Math.max(total.maxRssAboveStartMB, (c.maxRssMB ?? 0) - (c.rssBeforeMB ?? 0));
  total.seconds += c.seconds;
}

function runTarget(target, cases, seed, hangMs) {
  const total = { target, cases: 0, unclassified: 0, typed: 0, accepted: 0, untyped: 0, crashes: [], hangs: [], errorClasses: {}, untypedExamples: [], maxCaseNativeBytes: 0, maxCaseRssBytes: 0, maxCaseRssAt: -1, maxRssAboveStartMB: 0, keptExamples: [], liveTensorsGrowth: 0, liveBytesGrowth: 0, blockCacheMB: 0, seconds: 0 };
  const statusFile = path.join(os.tmpdir(), `duat-fuzz-status-${process.pid}-${target}`);
  const start = (from) => new Promise((resolve) => {
    const c = fork(__filename, ['--child', target, '--from', String(from), '--to', String(cases), '--seed', String(seed), '--status', statusFile], { stdio: ['ignore', 'ignore', 'pipe', 'ipc'] });
    let stderr = '', last = Date.now(), done = null, hung = false, progress = null;
    c.stderr.on('data', (d) => (stderr = (stderr + d).slice(-2000)));
    c.on('message', (m) => {
      last = Date.now();
      if (m.type === 'done') done = m.counts;
      else progress = m;
    });
    const watch = setInterval(() => {
      if (Date.now() - last > hangMs) {
        hung = true;
        c.kill('SIGKILL');
      }
    }, 500);
    c.on('exit', (code, signal) => {
      clearInterval(watch);
      let at = from;
      try {
        at = fs.readFileSync(statusFile).readDoubleLE(0);
      } catch { /* never started a case */ }
      resolve({ done, code, signal, hung, at, stderr, progress });
    });
  });
  return (async () => {
    let from = 0;
    for (;;) {
      const r = await start(from);
      if (r.done) {
        merge(total, r.done);
        break;
      }
      // The child's last progress report classifies the cases before it; those between it and the
      // failing case ran but are unclassified; the run goes on after the failing case.
      const entry = { case: r.at, signal: r.signal, code: r.code, stderr: r.stderr.trim().split('\n').slice(-3).join(' | ') };
      (r.hung ? total.hangs : total.crashes).push(entry);
      const reported = r.progress ? r.progress.at : from;
      if (r.progress) merge(total, { ...r.progress.counts, seconds: 0 });
      total.unclassified += r.at - reported;
      total.cases += r.at - reported + 1;
      from = r.at + 1;
      if (from >= cases || total.crashes.length + total.hangs.length > 20) break;
    }
    fs.rmSync(statusFile, { force: true });
    return total;
  })();
}

function parseArgs(argv) {
  const o = { cases: 1000, seed: 1, targets: TARGETS, json: '', hangMs: 20000, child: '', from: 0, to: 0, status: '', case: -1 };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i].replace(/^--/, ''), v = argv[i + 1];
    i++;
    if (k === 'cases') o.cases = Number(v);
    else if (k === 'seed') o.seed = Number(v);
    else if (k === 'targets') o.targets = v.split(',');
    else if (k === 'json') o.json = v;
    else if (k === 'hang-ms') o.hangMs = Number(v);
    else if (k === 'child') o.child = v;
    else if (k === 'from') o.from = Number(v);
    else if (k === 'to') o.to = Number(v);
    else if (k === 'status') o.status = v;
    else if (k === 'case') o.case = Number(v);
    else throw new Error(`unknown flag --${k}`);
  }
  for (const t of o.targets) if (!TARGETS.includes(t)) throw new Error(`unknown target '${t}' (one of ${TARGETS.join(', ')})`);
  return o;
}

async function main() {
  const o = parseArgs(process.argv.slice(2));
  if (o.child) return child(o.child, o.from, o.to, o.seed, o.status);
  if (o.case >= 0) return child(o.targets[0], o.case, o.case + 1, o.seed, '', true);
  const results = [];
  for (const t of o.targets) {
    const r = await runTarget(t, o.cases, o.seed, o.hangMs);
    results.push(r);
    process.stderr.write(
      `${t.padEnd(12)} ${r.cases} cases: ${r.typed} typed errors, ${r.accepted} accepted, ${r.untyped} untyped, ` +
        `${r.crashes.length} crashes, ${r.hangs.length} hangs; a case's peak: native ${(r.maxCaseNativeBytes / MB).toFixed(1)} MB, ` +
        `process growth ${(r.maxCaseRssBytes / MB).toFixed(1)} MB (case ${r.maxCaseRssAt}); ` +
        `peak RSS above start ${r.maxRssAboveStartMB.toFixed(0)} MB; native tensors left alive ${r.liveTensorsGrowth}, block cache ${r.blockCacheMB.toFixed(0)} MB ` +
        `(${r.seconds.toFixed(0)} s)\n`,
    );
    for (const x of [...r.crashes, ...r.hangs]) process.stderr.write(`  case ${x.case}: ${x.signal ?? 'exit ' + x.code} ${x.stderr}\n`);
    for (const x of r.untypedExamples) process.stderr.write(`  untyped at case ${x.case}: ${x.error}\n`);
  }
  const report = { seed: o.seed, casesPerTarget: o.cases, node: process.version, date: new Date().toISOString(), results };
  if (o.json) fs.writeFileSync(o.json, JSON.stringify(report, null, 2));
  const bad = results.reduce((a, r) => a + r.crashes.length + r.hangs.length + r.untyped, 0);
  process.stdout.write(JSON.stringify({ targets: results.length, findings: bad }) + '\n');
  process.exitCode = bad ? 1 : 0;
}

main().catch((e) => {
  process.stderr.write(`fuzz: ${e.stack || e}\n`);
  process.exitCode = 2;
});
