/**
 * binding.gyp builds the same sources (native/sources.json) with node-gyp, and that addon
 * computes what the cmake-js one does. Uses the node-gyp bundled with npm.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

import { loadBinding } from '../lib/native';

const root = path.resolve(__dirname, '..');

function findNodeGyp(): string | null {
  const candidates = [
    process.env.npm_execpath && path.join(path.dirname(process.env.npm_execpath), '..', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
    path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js'),
  ];
  return candidates.find((c): c is string => !!c && fs.existsSync(c)) ?? null;
}

const nodeGyp = findNodeGyp();
const headers = ['/usr/include/node/node_api.h', path.join(path.dirname(process.execPath), '..', 'include', 'node', 'node_api.h')].find((h) => fs.existsSync(h));
const maybe = nodeGyp && headers ? test : test.skip;
if (!nodeGyp || !headers) console.log(`skipping the node-gyp build test: ${nodeGyp ? 'no local Node headers' : "npm's node-gyp not found"}`);

maybe('binding.gyp builds the addon from native/sources.json with node-gyp, offline', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'duat-gyp-'));
  for (const f of ['binding.gyp', 'package.json']) fs.copyFileSync(path.join(root, f), path.join(dir, f));
  fs.cpSync(path.join(root, 'native'), path.join(dir, 'native'), { recursive: true });
  fs.symlinkSync(path.join(root, 'node_modules'), path.join(dir, 'node_modules'));
  const nodedir = path.resolve(path.dirname(headers!), '..', '..');
  execFileSync(process.execPath, [nodeGyp!, 'rebuild', `--nodedir=${nodedir}`, '-j', String(os.cpus().length)], { cwd: dir, stdio: 'pipe' });
  const b = loadBinding([path.join(dir, 'build', 'Release', 'duat.node')]);
  const t = b.fromData(new Float32Array([1, 2, 3, 4]), [2, 2]);
  expect(Array.from(b.toArray(b.matmul(t, t)))).toEqual([7, 10, 15, 22]);
  expect(b.backendInfo().cpu.threads).toBeGreaterThanOrEqual(1);
  fs.rmSync(dir, { recursive: true, force: true });
}, 600000);
