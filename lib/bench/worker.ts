/**
 * Times one configuration in a fresh process (so peak RSS is this measurement's): inference at
 * batch 1 and 64, or a training step (forward, backward, AdamW) at batch 64. Prints JSON.
 * Usage: node dist/bench/worker.js '<config json>' infer|train <reps> <threads>
 */
import * as duat from '../index';

async function main(): Promise<void> {
  const [cfgJson, mode, repsArg, threadsArg] = process.argv.slice(2);
  const cfg = JSON.parse(cfgJson) as duat.ParaFormerOptions;
  const reps = Number(repsArg || 20);
  if (Number(threadsArg)) duat.setNumThreads(Number(threadsArg));
  const model = new duat.ParaFormer(cfg);
  const size = cfg.imageSize ?? 28, ch = cfg.channels ?? 1;
  const timed = async (fn: () => Promise<void> | void) => {
    for (let i = 0; i < 3; i++) await fn();
    const t: number[] = [];
    for (let i = 0; i < reps; i++) {
      const t0 = process.hrtime.bigint();
      await fn();
      t.push(Number(process.hrtime.bigint() - t0) / 1e6);
    }
    t.sort((a, b) => a - b);
    return { median_ms: t[Math.floor(t.length / 2)], min_ms: t[0], max_ms: t[t.length - 1] };
  };
  const out: Record<string, unknown> = { framework: 'duat', threads: duat.getNumThreads(), isa: duat.backendInfo().cpu.isa };
  if (mode === 'infer') {
    for (const b of [1, 64]) {
      const x = duat.randn([b, ch, size, size], { seed: 1 });
      out[`infer_b${b}`] = await timed(() => duat.noGrad(() => duat.tidy(() => void model.forward(x).toArray())));
      x.dispose();
    }
  } else {
    const x = duat.randn([64, ch, size, size], { seed: 1 });
    const y = Int32Array.from({ length: 64 }, (_, i) => i % (cfg.classes ?? 10));
    const opt = new duat.optim.AdamW(model.parameters(), { lr: 1e-3 });
    out.train_b64 = await timed(async () => void (await model.trainStep(x, y, { optimizer: opt })));
  }
  out.peak_rss_mb = process.resourceUsage().maxRSS / 1024;
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((e: unknown) => {
  process.stderr.write(String(e instanceof Error ? e.stack : e) + '\n');
  process.exit(1);
});
