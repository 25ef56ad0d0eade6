/** Renders DUAT's input-dependent parameters (attention maps) for one image as an SVG picture. */
import type { BranchAttention } from '../nn/ParaFormer';

/**
 * One panel per stage and branch: how much the class token attends to each patch (mean over
 * heads), drawn over the patch grid, next to the input image.
 */
export function attentionSvg(image: Float32Array, size: number, maps: BranchAttention[], title: string): string {
  const pad = 16, panel = size * 4;
  const stages = Math.max(...maps.map((m) => m.stage)) + 1, branches = Math.max(...maps.map((m) => m.branch)) + 1;
  const W = pad + (panel + pad) * (branches + 1), H = 40 + (panel + pad + 14) * stages;
  const parts: string[] = [];
  // The input (first channel), grey levels.
  let lo = Infinity, hi = -Infinity;
  for (let i = 0; i < size * size; i++) { lo = Math.min(lo, image[i]); hi = Math.max(hi, image[i]); }
  const px = panel / size;
  for (let y = 0; y < size; y++)
    for (let x = 0; x < size; x++) {
      const g = Math.round((255 * (image[y * size + x] - lo)) / Math.max(1e-6, hi - lo));
      parts.push(`<rect x="${(pad + x * px).toFixed(1)}" y="${(40 + y * px).toFixed(1)}" width="${px.toFixed(2)}" height="${px.toFixed(2)}" fill="rgb(${g},${g},${g})"/>`);
    }
  parts.push(`<text x="${pad}" y="${40 + panel + 14}">input</text>`);
  for (const m of maps) {
    const [, H2, T1] = m.maps.shape;
    const G = Math.round(Math.sqrt(T1 - 1));
    const a = m.maps.toArray();
    const cls = new Float32Array(G * G);
    for (let h = 0; h < H2; h++) for (let t = 1; t < T1; t++) cls[t - 1] += a[(h * T1) * T1 + t] / H2;  // image 0, query = class token
    const max = Math.max(...cls, 1e-9);
    const x0 = pad + (panel + pad) * (m.branch + 1), y0 = 40 + (panel + pad + 14) * m.stage, c = panel / G;
    for (let y = 0; y < G; y++)
      for (let x = 0; x < G; x++) {
        const v = cls[y * G + x] / max;
        parts.push(`<rect x="${(x0 + x * c).toFixed(1)}" y="${(y0 + y * c).toFixed(1)}" width="${c.toFixed(2)}" height="${c.toFixed(2)}" fill="rgb(${Math.round(255 * v)},${Math.round(80 * v)},${Math.round(255 * (1 - v))})"/>`);
      }
    parts.push(`<text x="${x0}" y="${y0 + panel + 14}">stage ${m.stage + 1}, branch ${m.branch + 1}</text>`);
  }
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" font-family="sans-serif" font-size="11">
<rect width="${W}" height="${H}" fill="white"/><text x="${pad}" y="22" font-size="14">${title}</text>
${parts.join('\n')}
</svg>
`;
}
