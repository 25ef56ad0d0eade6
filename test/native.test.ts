/** The C++ core tests (native/tests, run without Node through CTest's executable), reported here too. */
import { execFileSync } from 'child_process';
import * as path from 'path';

const root = path.resolve(__dirname, '..');

test('C++ core tests pass (every GEMM ISA path, shared math, autograd, thread pool)', () => {
  execFileSync('node', [path.join(root, 'scripts', 'build-native-tests.js')], { stdio: 'pipe' });
  const out = execFileSync(path.join(root, 'build-native', 'duat_tests'), { encoding: 'utf8' });
  const m = /(\d+) passed, (\d+) failed/.exec(out);
  expect(m).not.toBeNull();
  expect(Number(m![2])).toBe(0);
  expect(Number(m![1])).toBeGreaterThan(200);
}, 600000);
