#!/usr/bin/env node
// Load test of `duat serve` on the loopback: a server process (the CLI, the README's default
// Para-Former-2-2) answered by N clients that each send an MNIST digit PNG, wait for the answer and
// send again, for 1, 8 and 64 clients; requests per second and p50 / p99 latency, with batching
// (up to 64 images a forward; an idle model runs at once, or waits 2 ms for more) and without
// (one image a forward), in rounds whose order of modes rotates. Also the bare batched forward (model.predict of 64 images in this process), the ceiling
// a server could reach. Writes bench/results/serve.md and serve.json.
//   npm run build:ts && node scripts/bench-serve.js [--seconds 4] [--rounds 2] [--out bench/results]
'use strict';
const { spawn } = require('child_process');
const fs = require('fs');
const http = require('http');
const os = require('os');
const path = require('path');

const duat = require('../dist');

const arg = (name, def) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : def;
};
const seconds = Number(arg('seconds', 4)), rounds = Number(arg('rounds', 2)), outDir = arg('out', 'bench/results');
const root = path.resolve(__dirname, '..');
const png = fs.readFileSync(path.join(root, 'test', 'fixtures', 'mnist-test-0-seven.png'));
const CLIENTS = [1, 8, 64];
const MODES = [
  { name: 'batched (the default: max 64, no wait)', flags: ['--max-batch', '64', '--max-wait-ms', '0'] },
  { name: 'batched, idle model waits 2 ms', flags: ['--max-batch', '64', '--max-wait-ms', '2'] },
  { name: 'one image per forward', flags: ['--max-batch', '1', '--max-wait-ms', '0'] },
];

function post(url, agent) {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: 'POST', agent, headers: { 'Content-Type': 'image/png', 'Content-Length': png.length } }, (res) => {
      res.resume();
      res.on('end', () => (res.statusCode === 200 ? resolve() : reject(new Error(`status ${res.statusCode}`))));
    });
    req.on('error', reject);
    req.end(png);
  });
}

async function startServer(file, flags) {
  const child = spawn(process.execPath, [path.join(root, 'dist', 'cli.js'), 'serve', '--model', file, '--port', '0', '--threads', '2', ...flags], { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const url = await new Promise((resolve, reject) => {
    child.stderr.on('data', (c) => {
      err += c;
      const m = /listening on (http:\/\/[^:]+:\d+)/.exec(err);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`server exited ${code}: ${err}`)));
  });
  return {
    url,
    stop: () => new Promise((resolve) => {
      child.on('exit', () => {
        const m = /served (\d+) predictions in (\d+) batches/.exec(err);
        resolve(m ? { predictions: Number(m[1]), batches: Number(m[2]) } : null);
      });
      child.kill('SIGTERM');
    }),
  };
}

/** `clients` loops of request-answer for `secs` seconds after a 1 s warm-up: rate and latencies. */
async function load(url, clients, secs) {
  const agent = new http.Agent({ keepAlive: true, maxSockets: clients });
  const lat = [];
  // Every client warms up until `warmEnd`; the first request to finish after it opens the measured
  // window for all, which ends `secs` later.
  const warmEnd = Date.now() + 1000;
  let start = 0, stopAt = Infinity;
  const loop = async () => {
    for (;;) {
      const t0 = process.hrtime.bigint();
      await post(`${url}/predict`, agent);
      const now = Date.now();
      if (start && now <= stopAt) lat.push(Number(process.hrtime.bigint() - t0) / 1e6);
      if (!start && now >= warmEnd) {
        start = now;
        stopAt = now + secs * 1000;
      }
      if (now > stopAt) return;
    }
  };
  await Promise.all(Array.from({ length: clients }, loop));
  agent.destroy();
  lat.sort((a, b) => a - b);
  const q = (p) => lat[Math.min(lat.length - 1, Math.floor(p * lat.length))];
  return { requests: lat.length, perSecond: lat.length / secs, p50: q(0.5), p99: q(0.99) };
}

async function bareForward(file) {
  const model = duat.load(file);
  duat.setNumThreads(2);
  const px = new Float32Array(64 * 784).fill(0.5);
  for (let i = 0; i < 3; i++) await model.predict(px);
  const t0 = Date.now();
  let n = 0;
  while (Date.now() - t0 < 2000) {
    await model.predict(px);
    n += 64;
  }
  const rate = n / ((Date.now() - t0) / 1000);
  model.dispose();
  return rate;
}

async function main() {
  const model = duat.ParaFormer.preset('para-former-2-2', 'mnist', { patchSize: 7 });
  model.inputSpec = { mean: [duat.data.MNIST_MEAN], std: [duat.data.MNIST_STD] };
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'duat-bench-serve-')), 'model.safetensors');
  duat.save(file, model);
  model.dispose();
  const results = [];
  for (let r = 0; r < rounds; r++) {
    const order = MODES.map((_, i) => MODES[(i + r) % MODES.length]);
    for (const mode of order) {
      const server = await startServer(file, mode.flags);
      for (const clients of CLIENTS) {
        const res = await load(server.url, clients, seconds);
        results.push({ round: r, mode: mode.name, clients, ...res });
        process.stderr.write(`round ${r + 1} ${mode.name}, ${clients} clients: ${res.perSecond.toFixed(0)} req/s, p50 ${res.p50.toFixed(2)} ms, p99 ${res.p99.toFixed(2)} ms\n`);
      }
      const served = await server.stop();
      results.filter((x) => x.round === r && x.mode === mode.name).forEach((x) => (x.meanBatchAllClients = served ? served.predictions / served.batches : null));
    }
  }
  const bare = await bareForward(file);
  const range = (xs, f) => {
    const lo = Math.min(...xs), hi = Math.max(...xs);
    return lo === hi || f(lo) === f(hi) ? f(lo) : `${f(lo)}-${f(hi)}`;
  };
  const lines = [
    '# `duat serve` under load, on the loopback',
    '',
    `Command: \`node scripts/bench-serve.js --seconds ${seconds} --rounds ${rounds}\` (${new Date().toISOString().slice(0, 10)}).`,
    `Machine: ${os.cpus().length} cores (${os.cpus()[0].model}), shared by the server (2 threads) and the`,
    'load generator, so every figure includes the clients\' own CPU time. Model: the README\'s default',
    'Para-Former-2-2 (dim 64, 4 heads, patch 7, 28 x 28 x 1; random weights: speed does not depend on',
    'them). Each client sends the same MNIST digit PNG (a real upload: 28 x 28, decoded on every',
    'request), waits for the answer, and sends again over a kept-alive connection; 1 s of warm-up,',
    `then ${seconds} s measured. Ranges are the spread over ${rounds} rounds, the order of modes rotating.`,
    '',
    '| server | clients | requests/s | p50 latency (ms) | p99 latency (ms) | images per forward (all loads) |',
    '|---|---|---|---|---|---|',
  ];
  for (const mode of MODES) {
    for (const clients of CLIENTS) {
      const rs = results.filter((x) => x.mode === mode.name && x.clients === clients);
      lines.push(`| ${mode.name} | ${clients} | ${range(rs.map((x) => x.perSecond), (v) => v.toFixed(0))} | ${range(rs.map((x) => x.p50), (v) => v.toFixed(2))} | ` +
        `${range(rs.map((x) => x.p99), (v) => v.toFixed(2))} | ${range(rs.map((x) => x.meanBatchAllClients ?? NaN), (v) => v.toFixed(1))} |`);
    }
  }
  lines.push('', `The bare batched forward (\`model.predict\` of 64 images, this process, 2 threads): ${bare.toFixed(0)} images/s.`);
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'serve.json'), JSON.stringify({ seconds, rounds, bareImagesPerSecond: bare, results }, null, 2) + '\n');
  const md = path.join(outDir, 'serve.md');
  const keep = fs.existsSync(md) ? fs.readFileSync(md, 'utf8').split('\n<!-- reading -->\n')[1] : undefined;
  fs.writeFileSync(md, lines.join('\n') + '\n' + (keep ? `\n<!-- reading -->\n${keep}` : ''));
  process.stdout.write(lines.join('\n') + '\n');
}

main().catch((e) => {
  process.stderr.write(`${e.stack}\n`);
  process.exitCode = 1;
});
