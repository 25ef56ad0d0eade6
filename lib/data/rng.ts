/** A seeded 32-bit generator (mulberry32) whose state can be saved and restored: batch order, augmentation, splits. */
export class Rng {
  constructor(public state: number) {}
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  int(n: number): number {
    return Math.floor(this.next() * n);
  }
  /** Shuffles `a` in place (Fisher-Yates, from the end) and returns it. */
  shuffle<T extends unknown[] | Int32Array>(a: T): T {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      [a[i], a[j]] = [a[j], a[i]];
    }
    return a;
  }
}

/**
 * The stratified choice of data.select, data.split and ImageStream.split: per class (in
 * `classes` order), `count(n)` of its n row indices, chosen by one shuffle from `rng` where that
 * is fewer than n. Returns them class by class.
 */
export function pickPerClass(labels: ArrayLike<number>, classes: number[], count: (n: number) => number, rng: Rng): number[] {
  const byClass = new Map<number, number[]>(classes.map((c) => [c, []]));
  for (let i = 0; i < labels.length; i++) byClass.get(labels[i])?.push(i);
  const out: number[] = [];
  for (const list of byClass.values()) {
    const n = count(list.length);
    out.push(...(n >= list.length ? list : rng.shuffle(list).slice(0, n)));
  }
  return out;
}
