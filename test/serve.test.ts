/**
 * duat.serve and `duat serve`: answers equal model.predict on the same image, concurrent requests
 * share forwards, and bad requests get a 4xx with a message while the server goes on.
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as http from 'http';
import * as os from 'os';
import * as path from 'path';

import * as duat from '../lib';

const DIGIT = path.join(__dirname, 'fixtures', 'mnist-test-0-seven.png');
const CLI = path.join(__dirname, '..', 'lib', 'cli.ts');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-serve-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown>;
}

function request(url: string, method: string, body?: Buffer, agent?: http.Agent): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, agent, headers: body ? { 'Content-Type': 'image/png', 'Content-Length': body.length } : {} }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text ? JSON.parse(text) : {} });
      });
    });
    req.on('error', reject);
    req.end(body);
  });
}

const NAMES = ['zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine'];

function namedModel(seed = 1): duat.ParaFormer {
  const m = new duat.ParaFormer({ patchSize: 7, dim: 16, heads: 2, depth: 1, branches: 2, seed });
  m.inputSpec = { mean: [duat.data.MNIST_MEAN], std: [duat.data.MNIST_STD], classNames: NAMES };
  return m;
}

describe('duat.serve', () => {
  let model: duat.ParaFormer;
  let server: duat.ModelServer;
  const png = fs.readFileSync(DIGIT);
  beforeAll(async () => {
    model = namedModel();
    server = await duat.serve(model, { port: 0, maxBatch: 16, maxWaitMs: 20 });
  });
  afterAll(async () => {
    await server.close();
    model.dispose();
  });

  test('POST /predict answers what model.predict answers for the same image', async () => {
    const [want] = await model.predict(duat.data.prepareImage(duat.data.readImage(DIGIT), 1, 28));
    const r = await request(`${server.url}/predict`, 'POST', png);
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.body.prediction).toBe(want.label);
    expect(r.body.class).toBe(want.class);
    expect(r.body.probability as number).toBeCloseTo(want.probability, 6);
    const topList = r.body.top as { class: number; label: string; probability: number }[];
    expect(topList).toHaveLength(5);
    for (const t of topList) {
      expect(t.label).toBe(NAMES[t.class]);
      expect(t.probability).toBeCloseTo(want.probabilities[t.class], 6);
    }
    expect(topList.map((t) => t.probability)).toEqual([...topList.map((t) => t.probability)].sort((a, b) => b - a));
  });

  test('requests that arrive together share forwards, and each gets its own answer', async () => {
    const before = server.stats();
    const agent = new http.Agent({ keepAlive: true, maxSockets: 32 });
    const answers = await Promise.all(Array.from({ length: 32 }, () => request(`${server.url}/predict`, 'POST', png, agent)));
    agent.destroy();
    expect(answers.every((a) => a.status === 200 && a.body.prediction === answers[0].body.prediction)).toBe(true);
    const after = server.stats();
    expect(after.images - before.images).toBe(32);
    expect(after.batches - before.batches).toBeLessThan(32);  // batched: fewer forwards than requests
    expect(after.batches - before.batches).toBeGreaterThanOrEqual(2);  // at most 16 in one
  });

  test('GET /health describes the model', async () => {
    const r = await request(`${server.url}/health`, 'GET');
    expect(r.status).toBe(200);
    expect(r.body).toMatchObject({ ok: true, model: 'Para-Former-1-2', imageSize: 28, channels: 1, classes: 10, classNames: NAMES, device: 'cpu' });
  });

  test('bad requests get a 4xx with a message, and the server goes on', async () => {
    const garbage = await request(`${server.url}/predict`, 'POST', Buffer.from('this is not an image'));
    expect(garbage.status).toBe(400);
    expect(garbage.body.error).toMatch(/the upload: cannot decode the image \(not a PNG or JPEG file\)/);
    const truncated = await request(`${server.url}/predict`, 'POST', png.subarray(0, 60));
    expect(truncated.status).toBe(400);
    expect(truncated.body.error).toMatch(/the upload/);
    const empty = await request(`${server.url}/predict`, 'POST', Buffer.alloc(0));
    expect(empty.status).toBe(400);
    expect(empty.body.error).toMatch(/empty body/);
    const get = await request(`${server.url}/predict`, 'GET');
    expect(get.status).toBe(405);
    expect(get.headers.allow).toBe('POST');
    const nowhere = await request(`${server.url}/nowhere`, 'GET');
    expect(nowhere.status).toBe(404);
    expect(nowhere.body.error).toMatch(/no such path: \/nowhere/);
    const ok = await request(`${server.url}/predict`, 'POST', png);
    expect(ok.status).toBe(200);
    expect(server.stats().errors).toBeGreaterThanOrEqual(5);
  });

  test('an upload past maxBodyBytes is a 413; bad options are ArgumentErrors', async () => {
    const small = await duat.serve(model, { port: 0, maxBodyBytes: 100 });
    try {
      const r = await request(`${small.url}/predict`, 'POST', png);
      expect(r.status).toBe(413);
      expect(r.body.error).toMatch(/larger than 100 bytes/);
    } finally {
      await small.close();
    }
    await expect(duat.serve(model, { port: 70000 })).rejects.toThrow(/port/);
    await expect(duat.serve(model, { maxBatch: 0 })).rejects.toThrow(duat.ArgumentError);
    await expect(duat.serve({} as duat.ParaFormer)).rejects.toThrow(/Expected a ParaFormer/);
  });
});

test('duat serve: listens, answers with the class names in the file, and closes on SIGTERM', async () => {
  const model = namedModel(2);
  const file = path.join(tmp, 'named.safetensors');
  duat.save(file, model);
  model.dispose();
  const child = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', CLI, 'serve', '--model', file, '--port', '0', '--threads', '1'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (c: Buffer) => {
      stderr += c.toString();
      const m = /listening on (http:\/\/[^:]+:\d+)/.exec(stderr);
      if (m) resolve(m[1]);
    });
    child.on('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
  });
  const r = await request(`${url}/predict`, 'POST', fs.readFileSync(DIGIT));
  expect(r.status).toBe(200);
  expect(NAMES).toContain(r.body.prediction);
  const code = await new Promise<number | null>((resolve) => {
    child.on('exit', resolve);
    child.kill('SIGTERM');
  });
  expect(code).toBe(0);
  expect(stderr).toMatch(/served 1 predictions in 1 batches \(0 errors\)/);
}, 30000);
