/** A dependency-free SVG training curve: step losses (smoothed) and per-epoch test accuracy. */

export function curveSvg(losses: number[], epochs: { step: number; test?: { accuracy: number } }[]): string {
  const W = 720, H = 360, L = 56, R = 56, T = 24, B = 40;
  const pw = W - L - R, ph = H - T - B;
  const n = Math.max(losses.length, 1);
  // Exponential moving average so the curve is readable at thousands of steps.
  const smooth: number[] = [];
  // Skipped steps (a NaN or infinite loss) leave the average where it was.
  let ema = losses.find(Number.isFinite) ?? 0;
  for (const l of losses) smooth.push(Number.isFinite(l) ? (ema = 0.95 * ema + 0.05 * l) : ema);
  const maxLoss = Math.max(1e-6, ...smooth.slice(Math.min(5, smooth.length - 1)), ...smooth.slice(0, 1));
  const x = (i: number) => L + (pw * i) / Math.max(1, n - 1);
  const yl = (v: number) => T + ph - (ph * Math.min(v, maxLoss)) / maxLoss;
  const ya = (a: number) => T + ph - ph * a;
  const path = smooth.map((v, i) => `${i ? 'L' : 'M'}${x(i).toFixed(1)},${yl(v).toFixed(1)}`).join('');
  const acc = epochs.filter((e) => e.test).map((e) => `${x(e.step - 1).toFixed(1)},${ya(e.test!.accuracy).toFixed(1)}`);
  const ticks = [0, 0.25, 0.5, 0.75, 1];
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/>
<rect x="${L}" y="${T}" width="${pw}" height="${ph}" fill="none" stroke="#999"/>
${ticks.map((t) => `<text x="${L - 6}" y="${yl(t * maxLoss) + 4}" text-anchor="end">${(t * maxLoss).toFixed(2)}</text>`).join('\n')}
${ticks.map((t) => `<text x="${W - R + 6}" y="${ya(t) + 4}">${(t * 100).toFixed(0)}%</text>`).join('\n')}
<text x="${L + pw / 2}" y="${H - 10}" text-anchor="middle">step (of ${losses.length})</text>
<text x="14" y="${T + ph / 2}" transform="rotate(-90 14 ${T + ph / 2})" text-anchor="middle" fill="#1f77b4">training loss (EMA)</text>
<text x="${W - 12}" y="${T + ph / 2}" transform="rotate(90 ${W - 12} ${T + ph / 2})" text-anchor="middle" fill="#d62728">test accuracy</text>
<path d="${path}" fill="none" stroke="#1f77b4" stroke-width="1.5"/>
${acc.length ? `<polyline points="${acc.join(' ')}" fill="none" stroke="#d62728" stroke-width="2"/>` : ''}
${acc.map((p) => `<circle cx="${p.split(',')[0]}" cy="${p.split(',')[1]}" r="3" fill="#d62728"/>`).join('\n')}
</svg>
`;
}
