/**
 * The examples run as a user would run them (`require('duat')` resolving to this package), and
 * the API reference in docs/api is what `npm run docs` makes from the current sources.
 */
import { spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.join(__dirname, '..');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-examples-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

// A node_modules with 'duat' in it: the package itself (its main is dist/, which `npm test` builds first).
beforeAll(() => {
  fs.mkdirSync(path.join(tmp, 'node_modules'));
  fs.symlinkSync(root, path.join(tmp, 'node_modules', 'duat'), 'dir');
});

function example(name: string, args: string[] = []): string {
  const r = spawnSync(process.execPath, [path.join(root, 'examples', name), ...args], {
    encoding: 'utf8', env: { ...process.env, NODE_PATH: path.join(tmp, 'node_modules'), DUAT_NUM_THREADS: '2' },
  });
  if (r.status !== 0) throw new Error(`${name} exited ${r.status}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

describe('examples/', () => {
  test('every script is listed in examples/README.md and run here', () => {
    const scripts = fs.readdirSync(path.join(root, 'examples')).filter((f) => f.endsWith('.js')).sort();
    const readme = fs.readFileSync(path.join(root, 'examples', 'README.md'), 'utf8');
    for (const s of scripts) expect(readme).toContain(`[${s}](${s})`);
    const tested = fs.readFileSync(__filename, 'utf8');
    for (const s of scripts) expect(tested).toContain(`example('${s}'`);
  });

  test('train-mnist.js trains, saves, loads and predicts the first test image (a 7)', () => {
    const out = example('train-mnist.js');
    const acc = Number(/test accuracy after 564 steps: ([\d.]+)%/.exec(out)?.[1]);
    expect(acc).toBeGreaterThan(50);
    expect(out).toMatch(/the first test image is a 7; the saved model says \d \([\d.]+%\)/);
  }, 60000);

  test('training-loop.js learns its synthetic task', () => {
    const out = example('training-loop.js');
    expect(Number(/held-out accuracy: ([\d.]+)%/.exec(out)?.[1])).toBeGreaterThan(90);
  }, 60000);

  test('serve.js answers its own request', () => {
    expect(example('serve.js')).toMatch(/listening on http:\/\/127\.0\.0\.1:\d+\npredicted \d \([\d.]+%\)/);
  }, 30000);

  test('attention-maps.js prints a 4 x 4 grid per stage and branch that sums to 1 with the class token', () => {
    const out = example('attention-maps.js');
    expect(out.match(/stage \d, branch \d: class-token attention per patch/g)).toHaveLength(4);
    const grid = out.split('\n').filter((l) => /^ {2}[\d.]+( [\d.]+){3}$/.test(l));
    expect(grid).toHaveLength(16);
    for (let g = 0; g < 4; g++) {
      const total = grid.slice(4 * g, 4 * g + 4).flatMap((l) => l.trim().split(' ').map(Number)).reduce((a, b) => a + b, 0);
      expect(total).toBeGreaterThan(0.8);  // the rest goes to the class token itself
      expect(total).toBeLessThanOrEqual(1.01);
    }
  }, 30000);
});

test('docs/api is what `npm run docs` makes from the sources, without warnings', () => {
  const out = path.join(tmp, 'api');
  const r = spawnSync(process.execPath, [path.join(root, 'node_modules', 'typedoc', 'bin', 'typedoc'), '--out', out], { cwd: root, encoding: 'utf8' });
  expect(r.status).toBe(0);
  expect(r.stdout + r.stderr).not.toMatch(/warning|error/i);
  const files = (dir: string): string[] => fs.readdirSync(dir, { recursive: true, encoding: 'utf8' }).filter((f) => fs.statSync(path.join(dir, f)).isFile()).sort();
  const committed = path.join(root, 'docs', 'api');
  expect(files(committed)).toEqual(files(out));
  for (const f of files(out)) {
    // run `npm run docs` and commit docs/api when this fails
    expect({ file: f, text: fs.readFileSync(path.join(committed, f), 'utf8') }).toEqual({ file: f, text: fs.readFileSync(path.join(out, f), 'utf8') });
  }
}, 60000);
