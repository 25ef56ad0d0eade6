#!/usr/bin/env node
// What the papers do with branches, measured on MNIST and Fashion-MNIST (docs/results-branches.md):
//   progressive  Para-Former-1-4 trained all at once, progressively (a branch joins every
//                epochs/4 epochs, zero output), and progressively with earlier branches frozen:
//                test accuracy per epoch, time to a target, and the accuracy of the first k
//                branches alone (how well the model compresses to its first branches).
//   continual    Para-Former-1-4 trained on digits 0-4, then on 5-9 by fine-tuning the whole
//                model, or by adding 4 zero-output branches with the old ones frozen (and the
//                embedding too): accuracy on each half after each phase.
//   finetune     A ViT-4 pretrained on MNIST gives its blocks to a Para-Former-1-4 (block i is
//                branch i), fine-tuned on 1%, 10% and 100% of Fashion-MNIST against the same
//                model from scratch, for the same number of steps.
//   fashion      Para-Former-m-n against ViT at equal total layers on Fashion-MNIST.
// Each experiment's numbers go to docs/results-branches.json (merged, so experiments can run
// separately) and the page with its pictures is written from that file.
//   npm run build:ts && node scripts/bench-branches.js --exp progressive,continual,finetune,fashion [--seeds 0,1] [--epochs N]
'use strict';
const fs = require('fs');
const path = require('path');

const duat = require('../dist');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const ROOT = path.join(__dirname, '..');
const JSON_FILE = path.join(ROOT, 'docs', 'results-branches.json');
const SIZE = { dim: 64, heads: 4, mlpRatio: 2, patchSize: 7 };
// The README's recipe (duat train's defaults) at batch 128.
const RECIPE = { batchSize: 128, lr: 2e-3, warmupSteps: 300, weightDecay: 0.05, shift: 2, progress: false };
const seeds = String(arg('seeds', '0,1')).split(',').map(Number);
const say = (s) => process.stderr.write(s + '\n');
const pct = (a) => (100 * a).toFixed(2);
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

/** Test accuracy restricted to `classes` (task-incremental) and over all classes, on the images of `classes`. */
function accuracyOn(model, data, classes) {
  const part = duat.data.select(data, { classes });
  const per = data.channels * data.size * data.size, K = model.config.classes;
  let all = 0, within = 0;
  for (let at = 0; at < part.count; at += 500) {
    const n = Math.min(500, part.count - at);
    const x = duat.tensor(part.images.subarray(at * per, (at + n) * per), [n, data.channels, data.size, data.size]);
    const z = duat.noGrad(() => duat.tidy(() => model.forward(x).toArray()));
    x.dispose();
    for (let i = 0; i < n; i++) {
      const row = z.subarray(i * K, (i + 1) * K), y = part.labels[at + i];
      let best = 0, bestIn = classes[0];
      for (let k = 1; k < K; k++) if (row[k] > row[best]) best = k;
      for (const k of classes) if (row[k] > row[bestIn]) bestIn = k;
      all += best === y ? 1 : 0;
      within += bestIn === y ? 1 : 0;
    }
  }
  return { all: all / part.count, within: within / part.count };
}

async function progressive(epochs) {
  const train = duat.data.loadMnist('train'), test = duat.data.loadMnist('test');
  const every = Math.max(1, Math.floor(epochs / 4));
  const variants = [
    { name: 'all at once', progressive: undefined },
    { name: `progressive (a branch every ${every} epochs, zero output)`, progressive: { start: 1, add: 1, every } },
    { name: 'progressive, earlier branches frozen', progressive: { start: 1, add: 1, every, freeze: true } },
  ];
  const runs = [];
  for (const seed of seeds) {
    for (const v of variants) {
      const model = new duat.ParaFormer({ ...SIZE, depth: 1, branches: 4, seed });
      const r = await duat.fit(model, { train, test }, { ...RECIPE, epochs, seed, progressive: v.progressive });
      let t = 0;
      const curve = r.history.map((h) => ({ epoch: h.epoch + 1, seconds: (t += h.seconds), accuracy: h.test.accuracy, active: h.activeBranches ?? 4 }));
      const firstK = [];
      for (let k = 1; k <= 4; k++) {
        const small = model.selectBranches(Array.from({ length: k }, (_, b) => b));
        firstK.push((await duat.evaluate(small, test)).accuracy);
        small.dispose();
      }
      runs.push({ variant: v.name, seed, accuracy: r.test.accuracy, seconds: r.seconds, curve, losses: smoothLosses(r.losses), firstK });
      say(`progressive: ${v.name} seed ${seed}: ${pct(r.test.accuracy)}% in ${r.seconds.toFixed(0)} s; first k: ${firstK.map(pct).join(' ')}`);
      model.dispose();
    }
  }
  return { epochs, every, command: commandLine(), runs };
}

/** Step losses averaged over windows of 20 steps (for the picture). */
function smoothLosses(losses) {
  const out = [];
  for (let i = 0; i < losses.length; i += 20) out.push(mean(losses.slice(i, i + 20)));
  return out;
}

async function continual(epochs) {
  const train = duat.data.loadMnist('train'), test = duat.data.loadMnist('test');
  const low = [0, 1, 2, 3, 4], high = [5, 6, 7, 8, 9];
  const runs = [];
  for (const seed of seeds) {
    const base = new duat.ParaFormer({ ...SIZE, depth: 1, branches: 4, seed });
    await duat.fit(base, { train: duat.data.select(train, { classes: low }) }, { ...RECIPE, epochs, seed });
    const after1 = { low: accuracyOn(base, test, low), high: accuracyOn(base, test, high) };
    say(`continual seed ${seed}: after 0-4: ${pct(after1.low.all)}% on 0-4`);
    const ways = [
      { name: 'fine-tune the whole model', make: () => base.selectBranches([0, 1, 2, 3]) },
      { name: 'add 4 branches, old ones frozen', make: () => base.addBranches(4, { seed: seed + 100, freezeExisting: true }) },
      { name: 'add 4 branches, old ones and embedding frozen', make: () => base.addBranches(4, { seed: seed + 100, freezeExisting: true }).freezeBranches(4, { embedding: true }) },
    ];
    for (const w of ways) {
      const model = w.make();
      const t0 = Date.now();
      await duat.fit(model, { train: duat.data.select(train, { classes: high }) }, { ...RECIPE, epochs, seed: seed + 1 });
      const after2 = { low: accuracyOn(model, test, low), high: accuracyOn(model, test, high) };
      runs.push({ way: w.name, seed, after1, after2, branches: model.config.branches, parameters: model.parameterCount(), seconds: (Date.now() - t0) / 1000 });
      say(`continual ${w.name} seed ${seed}: 0-4 ${pct(after2.low.all)}% (within the half ${pct(after2.low.within)}%), 5-9 ${pct(after2.high.all)}%`);
      model.dispose();
    }
    base.dispose();
  }
  return { epochs, command: commandLine(), runs };
}

/** A Para-Former-1-n whose branch i is block i of a ViT-n (a Para-Former-n-1), its embedding and final norm; a fresh head. */
function fromViT(vit, seed) {
  const n = vit.config.depth;
  const pf = new duat.ParaFormer({ ...vit.config, depth: 1, branches: n, seed });
  duat.tidy(() => {
    const src = new Map(vit.namedParameters());
    const sd = new Map();
    for (const [name] of pf.namedParameters()) {
      if (name.startsWith('head.')) continue;
      if (name.startsWith('stages.0.')) {
        const key = name.slice('stages.0.'.length);
        sd.set(name, duat.F.concat(Array.from({ length: n }, (_, i) => src.get(`stages.${i}.${key}`)), 0));
      } else {
        sd.set(name, src.get(name));
      }
    }
    pf.loadStateDict(sd, false);
  });
  return pf;
}

async function finetune(steps) {
  const mnist = duat.data.loadMnist('train');
  const train = duat.data.loadFashionMnist('train'), test = duat.data.loadFashionMnist('test');
  const runs = [];
  for (const seed of seeds) {
    const vit = new duat.ParaFormer({ ...SIZE, depth: 4, branches: 1, seed });
    const pre = await duat.fit(vit, { train: mnist, test: duat.data.loadMnist('test') }, { ...RECIPE, epochs: 3, seed });
    say(`finetune seed ${seed}: ViT-4 pretrained on MNIST: ${pct(pre.test.accuracy)}%`);
    for (const fraction of [0.01, 0.1, 1]) {
      const part = duat.data.select(train, { fraction, seed });
      const epochs = Math.ceil(steps / duat.data.Batches.countFor(part.count, RECIPE.batchSize));
      for (const init of ['scratch', 'ViT-4 blocks']) {
        const model = init === 'scratch' ? new duat.ParaFormer({ ...SIZE, depth: 1, branches: 4, seed }) : fromViT(vit, seed);
        const r = await duat.fit(model, { train: part }, { ...RECIPE, epochs, maxSteps: steps, seed, warmupSteps: Math.min(RECIPE.warmupSteps, Math.floor(steps / 5)) });
        const accuracy = (await duat.evaluate(model, test)).accuracy;
        runs.push({ seed, fraction, images: part.count, init, steps: r.steps, accuracy, pretrained: pre.test.accuracy });
        say(`finetune ${init} ${fraction * 100}% (${part.count} images) seed ${seed}: ${pct(accuracy)}%`);
        model.dispose();
      }
    }
    vit.dispose();
  }
  return { steps, command: commandLine(), runs };
}

async function fashion(epochs) {
  const train = duat.data.loadFashionMnist('train'), test = duat.data.loadFashionMnist('test');
  const shapes = [[1, 1], [1, 2], [1, 4], [1, 6], [2, 3], [3, 2], [6, 1]];
  const runs = [];
  for (const seed of seeds) {
    for (const [m, n] of shapes) {
      const model = new duat.ParaFormer({ ...SIZE, depth: m, branches: n, seed });
      const r = await duat.fit(model, { train, test }, { ...RECIPE, epochs, seed });
      runs.push({ depth: m, branches: n, seed, accuracy: r.test.accuracy, seconds: r.seconds, parameters: model.parameterCount() });
      say(`fashion Para-Former-${m}-${n} seed ${seed}: ${pct(r.test.accuracy)}% in ${r.seconds.toFixed(0)} s`);
      model.dispose();
    }
  }
  return { epochs, command: commandLine(), runs };
}

function commandLine() {
  return `node scripts/bench-branches.js ${process.argv.slice(2).join(' ')}`;
}

// ---- the page ---------------------------------------------------------------------------------

const COLORS = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b', '#17becf'];

/** A line chart: series of [x, y] points. */
function lineSvg(title, xLabel, yLabel, series, yRange) {
  const W = 720, H = 360, L = 60, R = 220, T = 30, B = 40, pw = W - L - R, ph = H - T - B;
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1]));
  const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  const [y0, y1] = yRange ?? [Math.min(...ys), Math.max(...ys)];
  const X = (v) => L + (pw * (v - x0)) / Math.max(1e-9, x1 - x0);
  const Y = (v) => T + ph - (ph * (Math.min(Math.max(v, y0), y1) - y0)) / Math.max(1e-9, y1 - y0);
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((t) => y0 + t * (y1 - y0));
  const fmt = (v) => (Math.abs(y1 - y0) < 0.2 ? (100 * v).toFixed(1) + '%' : v.toFixed(2));
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${L}" y="18" font-size="13">${title}</text>
<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>
${ticks.map((t) => `<text x="${L - 6}" y="${Y(t) + 4}" text-anchor="end">${fmt(t)}</text>`).join('\n')}
<text x="${L + pw / 2}" y="${H - 10}" text-anchor="middle">${xLabel} (${x0} to ${+x1.toFixed(1)})</text>
<text x="14" y="${T + ph / 2}" transform="rotate(-90 14 ${T + ph / 2})" text-anchor="middle">${yLabel}</text>
${series.map((s, i) => `<polyline points="${s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(' ')}" fill="none" stroke="${COLORS[i % COLORS.length]}" stroke-width="1.5"${s.dashed ? ' stroke-dasharray="4 3"' : ''}/>
<text x="${W - R + 10}" y="${T + 14 + 16 * i}" fill="${COLORS[i % COLORS.length]}">${s.name}</text>`).join('\n')}
</svg>
`;
}

/** A bar chart: one bar per label (means), with each seed's value as a dot. */
function barSvg(title, yLabel, bars, yRange) {
  const W = 720, H = 340, L = 60, R = 20, T = 30, B = 70, pw = W - L - R, ph = H - T - B;
  const [y0, y1] = yRange;
  const Y = (v) => T + ph - (ph * (Math.min(Math.max(v, y0), y1) - y0)) / (y1 - y0);
  const slot = pw / bars.length, bw = slot * 0.6;
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((t) => y0 + t * (y1 - y0));
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/>
<text x="${L}" y="18" font-size="13">${title}</text>
<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>
${ticks.map((t) => `<text x="${L - 6}" y="${Y(t) + 4}" text-anchor="end">${(100 * t).toFixed(1)}%</text>`).join('\n')}
<text x="14" y="${T + ph / 2}" transform="rotate(-90 14 ${T + ph / 2})" text-anchor="middle">${yLabel}</text>
${bars.map((b, i) => {
    const x = L + slot * i + (slot - bw) / 2, m = mean(b.values);
    return `<rect x="${x.toFixed(1)}" y="${Y(m).toFixed(1)}" width="${bw.toFixed(1)}" height="${(T + ph - Y(m)).toFixed(1)}" fill="${b.color ?? COLORS[0]}" opacity="0.8"/>
${b.values.map((v) => `<circle cx="${(x + bw / 2).toFixed(1)}" cy="${Y(v).toFixed(1)}" r="2.5" fill="black"/>`).join('')}
<text x="${(x + bw / 2).toFixed(1)}" y="${T + ph + 14}" text-anchor="middle">${b.label}</text>${b.sub ? `<text x="${(x + bw / 2).toFixed(1)}" y="${T + ph + 28}" text-anchor="middle" fill="#555">${b.sub}</text>` : ''}`;
  }).join('\n')}
</svg>
`;
}

function writePage(results) {
  const out = [];
  const svg = (name, text) => fs.writeFileSync(path.join(ROOT, 'docs', name), text);
  out.push('# Branches: progressive training, compression, expansion, fine-tuning', '');
  out.push('What the papers do with a Para-Former\'s additive branches (arXiv 2510.15425 and 2407.21670), measured with duat',
    'on 2 CPU cores. Models are MNIST-sized (width 64, 4 heads, MLP 128, 7 x 7 patches) with the README\'s recipe (AdamW, lr 2e-3,',
    '300 warm-up steps, cosine, weight decay 0.05, shifts of 2 pixels, batch 128) unless a section says otherwise. Each',
    'section gives the command that made it; the numbers are in `docs/results-branches.json`.', '',
    `Machine: ${[...new Set(Object.values(results).map((r) => r && r.machine).filter(Boolean))].join('; ')}.`, '');
  const p = results.progressive;
  if (p) {
    out.push('## Progressive approximation', '', `\`${p.command}\` (seeds ${[...new Set(p.runs.map((r) => r.seed))].join(', ')}; ${p.epochs} epochs of MNIST)`, '');
    const target = Number(arg('target', 0.985));
    out.push(`| training | test accuracy | seconds | seconds to ${pct(target)}% | first 1 / 2 / 3 / 4 branches alone |`, '|---|---|---|---|---|');
    const names = [...new Set(p.runs.map((r) => r.variant))];
    const reach = (r) => r.curve.find((c) => c.accuracy >= target)?.seconds.toFixed(0) ?? 'never';
    for (const v of names) {
      const rs = p.runs.filter((r) => r.variant === v);
      out.push(`| ${v} | ${rs.map((r) => pct(r.accuracy)).join(', ')}% | ${rs.map((r) => r.seconds.toFixed(0)).join(', ')} | ${rs.map(reach).join(', ')} | ` +
        `${[0, 1, 2, 3].map((k) => rs.map((r) => pct(r.firstK[k])).join(', ')).join(' · ')} |`);
    }
    out.push('', 'Seeds are separated by commas in each cell; "first k branches alone" is the test accuracy of `selectBranches` of branches 0..k-1 of the trained model.');
    out.push('', '![test accuracy per epoch](results-branches-progressive.svg)', '');
    const first = p.runs.filter((r) => r.seed === p.runs[0].seed);
    svg('results-branches-progressive.svg', lineSvg('Para-Former-1-4 on MNIST: test accuracy against training time (seed ' + first[0].seed + ')', 'seconds', 'test accuracy',
      first.map((r) => ({ name: r.variant.replace(/ \(.*\)/, ''), points: [[0, 0.9], ...r.curve.map((c) => [c.seconds, c.accuracy])] })), [0.9, 1]));
    svg('results-branches-progressive-loss.svg', lineSvg('training loss (means of 20 steps)', 'step / 20', 'loss',
      first.map((r) => ({ name: r.variant.replace(/ \(.*\)/, ''), points: r.losses.map((l, i) => [i, l]) })), [0, 0.6]));
    out.push('![training loss](results-branches-progressive-loss.svg)', '');
    out.push(...(results.readings?.progressive ?? []), '');
  }
  const c = results.continual;
  if (c) {
    out.push('## Expansion for continual learning', '', `\`${c.command}\` (${c.epochs} epochs on each half of MNIST's training set)`, '');
    out.push('Accuracy on each half of the test set: "any class" takes the arg-max over all ten classes (class-incremental); "within the half" over the half\'s five (task-incremental, the features\' share).', '');
    out.push('| phase 2 | 0-4, any class | 0-4, within the half | 5-9, any class | parameters |', '|---|---|---|---|---|');
    const a1 = c.runs.filter((r) => r.way === c.runs[0].way);
    out.push(`| after phase 1 (0-4 only) | ${a1.map((r) => pct(r.after1.low.all)).join(', ')}% | ${a1.map((r) => pct(r.after1.low.within)).join(', ')}% | ${a1.map((r) => pct(r.after1.high.all)).join(', ')}% | |`);
    for (const w of [...new Set(c.runs.map((r) => r.way))]) {
      const rs = c.runs.filter((r) => r.way === w);
      out.push(`| ${w} | ${rs.map((r) => pct(r.after2.low.all)).join(', ')}% | ${rs.map((r) => pct(r.after2.low.within)).join(', ')}% | ${rs.map((r) => pct(r.after2.high.all)).join(', ')}% | ${rs[0].parameters.toLocaleString('en-US')} |`);
    }
    const ways = [...new Set(c.runs.map((r) => r.way))];
    svg('results-branches-continual.svg', barSvg('Digits 0-4 after learning 5-9: accuracy within the half (task-incremental)', 'accuracy on 0-4', [
      { label: 'before 5-9', values: a1.map((r) => r.after1.low.within), color: '#7f7f7f' },
      ...ways.map((w, i) => ({ label: ['fine-tune all', 'add 4, freeze old', 'add 4, freeze old + embedding'][i] ?? w, values: c.runs.filter((r) => r.way === w).map((r) => r.after2.low.within), color: COLORS[i] })),
    ], [0.5, 1]));
    out.push('', '![accuracy on 0-4 after each way of learning 5-9](results-branches-continual.svg)', '', ...(results.readings?.continual ?? []), '');
  }
  const f = results.finetune;
  if (f) {
    out.push('## Fine-tuning with limited data', '', `\`${f.command}\` (${f.steps} steps for every run; ViT-4 pretrained 3 epochs on MNIST: ${[...new Set(f.runs.map((r) => pct(r.pretrained)))].join(', ')}%)`, '');
    out.push('| Fashion-MNIST images | from scratch | from the ViT-4\'s blocks | difference |', '|---|---|---|---|');
    for (const fr of [...new Set(f.runs.map((r) => r.fraction))]) {
      const s = f.runs.filter((r) => r.fraction === fr && r.init === 'scratch'), v = f.runs.filter((r) => r.fraction === fr && r.init !== 'scratch');
      out.push(`| ${fr * 100}% (${s[0].images.toLocaleString('en-US')}) | ${s.map((r) => pct(r.accuracy)).join(', ')}% | ${v.map((r) => pct(r.accuracy)).join(', ')}% | ${(100 * (mean(v.map((r) => r.accuracy)) - mean(s.map((r) => r.accuracy)))).toFixed(2)} points |`);
    }
    const fr = [...new Set(f.runs.map((r) => r.fraction))];
    svg('results-branches-finetune.svg', barSvg('Fashion-MNIST after 1,000 steps: from scratch (blue) and from a ViT-4 pretrained on MNIST (red)', 'test accuracy',
      fr.flatMap((x) => ['scratch', 'ViT-4 blocks'].map((init, i) => ({
        label: init === 'scratch' ? 'scratch' : 'ViT blocks', sub: i === 0 ? `${x * 100}% of the data` : '', color: COLORS[i],
        values: f.runs.filter((r) => r.fraction === x && (r.init === 'scratch') === (init === 'scratch')).map((r) => r.accuracy),
      }))), [0.7, 0.85]));
    out.push('', '![accuracy against data size](results-branches-finetune.svg)', '', ...(results.readings?.finetune ?? []), '');
  }
  const fa = results.fashion;
  if (fa) {
    out.push('## Fashion-MNIST: Para-Former against ViT at equal total layers', '', `\`${fa.command}\` (${fa.epochs} epochs each; the deterministic stratified split of docs/design.md)`, '');
    out.push('| model | layers | test accuracy (per seed) | mean | seconds | parameters |', '|---|---|---|---|---|---|');
    for (const key of [...new Set(fa.runs.map((r) => `${r.depth}-${r.branches}`))]) {
      const rs = fa.runs.filter((r) => `${r.depth}-${r.branches}` === key);
      const name = rs[0].branches === 1 ? `ViT-${rs[0].depth}` : `Para-Former-${key}`;
      out.push(`| ${name} | ${rs[0].depth * rs[0].branches} | ${rs.map((r) => pct(r.accuracy)).join(', ')}% | ${pct(mean(rs.map((r) => r.accuracy)))}% | ${mean(rs.map((r) => r.seconds)).toFixed(0)} | ${rs[0].parameters.toLocaleString('en-US')} |`);
    }
    const keys = [...new Set(fa.runs.map((r) => `${r.depth}-${r.branches}`))];
    svg('results-branches-fashion.svg', barSvg(`Fashion-MNIST, ${fa.epochs} epochs: Para-Former-m-n (blue) and ViT (red) by total layers`, 'test accuracy', keys.map((key) => {
      const rs = fa.runs.filter((r) => `${r.depth}-${r.branches}` === key);
      return { label: rs[0].branches === 1 ? `ViT-${rs[0].depth}` : `PF-${key}`, sub: `${rs[0].depth * rs[0].branches} layers`, values: rs.map((r) => r.accuracy), color: rs[0].branches === 1 ? COLORS[1] : COLORS[0] };
    }), [0.7, 0.9]));
    out.push('', '![accuracy by arrangement](results-branches-fashion.svg)', '', 'The MNIST table at equal layers is in [results-mnist.md](results-mnist.md).', '', ...(results.readings?.fashion ?? []), '');
  }
  out.push('## Compression', '');
  const compressFile = path.join(ROOT, 'docs', 'results-compress.json');
  if (fs.existsSync(compressFile)) {
    // Made by scripts/bench-compress.js (its page, results-compress.md, has the command and the reading).
    const cr = JSON.parse(fs.readFileSync(compressFile, 'utf8'));
    out.push(`A Para-Former-${cr.depth}-${cr.branches} trained all at once (${cr.epochs} epochs of MNIST, ${pct(cr.full)}%), each stage cut to its k best branches, ranked by the output projections' norms or greedily by validation accuracy (\`node scripts/bench-compress.js\`; [results-compress.md](results-compress.md)):`, '');
    out.push('| branches kept | norm: test accuracy | greedy: test accuracy | file | forward, batch 64 |', '|---|---|---|---|---|');
    const ks = [...new Set(cr.rows.map((r) => r.k))].sort((a, b) => b - a);
    for (const k of ks) {
      const n = cr.rows.find((r) => r.k === k && r.method === 'norm'), g = cr.rows.find((r) => r.k === k && r.method === 'greedy');
      out.push(`| ${k} of ${cr.branches} | ${n ? pct(n.test) + '%' : ''} | ${g ? pct(g.test) + '%' : ''} | ${((n ?? g).bytes / cr.wholeBytes).toFixed(2)}x | ${((n ?? g).forwardMs / (n ?? g).wholeMs).toFixed(2)}x |`);
    }
    out.push('');
  }
  out.push('**Reading.** Cutting branches from a model trained all at once costs accuracy fast: only dropping a single branch of eight stays within 0.5 points (97.45%, a file 1.14x smaller). The "first k branches alone" column of the progressive table measures the same cut for progressively trained models, whose first branches learned to work alone: there one branch of four keeps 93.7-94.7% (2.0-2.7 points below the whole, a model 4x smaller in its stage), where the all-at-once model keeps 38.5-65.5%. The paper\'s large compression ratios need its progressive training, as it says.', '');
  fs.writeFileSync(path.join(ROOT, 'docs', 'results-branches.md'), out.join('\n'));
}

async function main() {
  duat.setNumThreads(2);
  const results = fs.existsSync(JSON_FILE) ? JSON.parse(fs.readFileSync(JSON_FILE, 'utf8')) : {};
  const exps = String(arg('exp', '')).split(',').filter(Boolean);
  for (const e of exps) {
    const t0 = Date.now();
    if (e === 'progressive') results.progressive = await progressive(Number(arg('epochs', 8)));
    else if (e === 'continual') results.continual = await continual(Number(arg('epochs', 3)));
    else if (e === 'finetune') results.finetune = await finetune(Number(arg('steps', 600)));
    else if (e === 'fashion') results.fashion = await fashion(Number(arg('epochs', 4)));
    else throw new Error(`unknown experiment ${e}`);
    results[e].machine = `${require('os').cpus()[0].model}, 2 threads, duat ${duat.version}, ${new Date().toISOString().slice(0, 10)}`;
    say(`${e}: ${((Date.now() - t0) / 1000).toFixed(0)} s`);
    fs.writeFileSync(JSON_FILE, JSON.stringify(results, null, 1));
  }
  writePage(results);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
