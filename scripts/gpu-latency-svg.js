#!/usr/bin/env node
// Draws the papers' picture from a GPU run (scripts/gpu-suite.sh --bench): batch-1 forward
// latency against the number of layers n for Para-Former-1-n and the serial ViT of depth n,
// duat's (eager launches and CUDA graph) beside PyTorch's (CUDA graph) when its table is there.
//   node scripts/gpu-latency-svg.js RUN_DIR OUT.svg [TITLE]
'use strict';
const fs = require('fs');
const path = require('path');

// Rows of the file's first Markdown table (the latency table; a training table may follow) whose
// first cell is n: { n: [cells...] }, with the header's names.
function table(file) {
  if (!fs.existsSync(file)) return null;
  const all = fs.readFileSync(file, 'utf8').split('\n');
  const start = all.findIndex((l) => l.startsWith('| '));
  if (start < 0) return null;
  const end = all.findIndex((l, i) => i > start && !l.startsWith('|'));
  const lines = all.slice(start, end < 0 ? all.length : end);
  const header = lines[0].split('|').slice(1, -1).map((s) => s.trim());
  const rows = lines.slice(1).map((l) => l.split('|').slice(1, -1).map((s) => s.trim())).filter((r) => /^\d+$/.test(r[0]));
  const col = (name) => header.indexOf(name);
  return { rows, col };
}

function series(t, name, label, color, dash) {
  const i = t ? t.col(name) : -1;
  if (i < 0) return null;
  return { label, color, dash, pts: t.rows.map((r) => [Number(r[0]), Number(r[i])]) };
}

const [dir, out, title = 'Batch-1 forward latency (ms) against number of layers, GPU'] = process.argv.slice(2);
if (!dir || !out) {
  console.error('usage: node scripts/gpu-latency-svg.js RUN_DIR OUT.svg [TITLE]');
  process.exit(2);
}
const duat = table(path.join(dir, 'bench-tf32.md'));
const torch = table(path.join(dir, 'torch-tf32.md'));
if (!duat) {
  console.error(`no bench-tf32.md in ${dir}`);
  process.exit(1);
}
const all = [
  series(duat, 'PF-1-n b1 eager', 'duat Para-Former-1-n', '#d62728'),
  series(duat, 'ViT-n b1 eager', 'duat ViT-n', '#1f77b4'),
  series(duat, 'PF-1-n b1 graph', 'duat PF-1-n (graph)', '#d62728', '2 3'),
  series(duat, 'ViT-n b1 graph', 'duat ViT-n (graph)', '#1f77b4', '2 3'),
  series(torch, 'PF-1-n b1 graph', 'PyTorch PF-1-n (graph)', '#ff9896', '6 3'),
  series(torch, 'ViT-n b1 graph', 'PyTorch ViT-n (graph)', '#aec7e8', '6 3'),
].filter(Boolean);
const W = 680, H = 380, L = 60, R = 220, T = 30, B = 44;
const maxN = Math.max(...all.flatMap((s) => s.pts.map((p) => p[0])));
const maxY = Math.max(...all.flatMap((s) => s.pts.map((p) => p[1])));
const x = (n) => L + ((W - L - R) * (n - 1)) / Math.max(1, maxN - 1);
const y = (v) => T + (H - T - B) * (1 - v / maxY);
const lines = all.map((s, i) =>
  `<polyline points="${s.pts.map(([n, v]) => `${x(n).toFixed(1)},${y(v).toFixed(1)}`).join(' ')}" fill="none" stroke="${s.color}" stroke-width="2"${s.dash ? ` stroke-dasharray="${s.dash}"` : ''}/>` +
  `<text x="${W - R + 10}" y="${T + 16 * i + 10}" fill="${s.color}">${s.label}</text>`);
const yTicks = [0, 0.25, 0.5, 0.75, 1].map((t) => `<text x="${L - 6}" y="${y(t * maxY) + 4}" text-anchor="end">${(t * maxY).toFixed(2)}</text>`);
const xTicks = [1, 4, 8, 12, 16].filter((n) => n <= maxN).map((n) => `<text x="${x(n)}" y="${H - B + 14}" text-anchor="middle">${n}</text>`);
fs.writeFileSync(out, `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/><rect x="${L}" y="${T}" width="${W - L - R}" height="${H - T - B}" fill="none" stroke="#999"/>
<text x="${L}" y="18" font-size="13">${title}</text>
${yTicks.join('\n')}
${xTicks.join('\n')}
<text x="${(L + W - R) / 2}" y="${H - 10}" text-anchor="middle">layers (n)</text>
${lines.join('\n')}
</svg>
`);
console.log(`wrote ${out}`);
