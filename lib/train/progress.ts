/**
 * Training progress on a stream (stderr): on a terminal, one line redrawn in place (a bar, steps,
 * epoch, loss, time left); elsewhere (a log file, CI, a pipe), a plain line every `every` seconds,
 * so a long run shows that it is alive without filling its log.
 */

/** What a progress line shows after a step. */
export interface ProgressState {
  step: number;
  epoch: number;
  loss: number;
}

/** Where progress goes and how often. */
export interface ProgressOptions {
  /** Redraw one line in place (a terminal) or print plain lines. */
  tty: boolean;
  /** Seconds between plain lines; 0 prints none. Ignored on a terminal. */
  every: number;
  /** The clock, in milliseconds (tests replace it). */
  now?: () => number;
}

/** "1 h 02 min", "4 min 05 s", "12 s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, '0')} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')} min`;
}

export class Progress {
  private readonly now: () => number;
  private readonly t0: number;
  private shownAt: number;
  private drawn = false;

  /** Progress over steps `first` .. `total` (a resumed run starts past 0). */
  constructor(
    private readonly out: { write(s: string): unknown },
    private readonly total: number,
    private readonly first: number,
    private readonly options: ProgressOptions,
  ) {
    this.now = options.now ?? Date.now;
    this.t0 = this.now();
    this.shownAt = this.t0;
  }

  /** The line for a state: steps, per cent, epoch, loss and the time left at the rate so far. */
  line(s: ProgressState): string {
    const done = s.step - this.first, left = this.total - s.step;
    const elapsed = (this.now() - this.t0) / 1000;
    const eta = done > 0 ? formatDuration((elapsed / done) * left) : '?';
    const pct = this.total > 0 ? Math.floor((100 * s.step) / this.total) : 100;
    return `step ${s.step}/${this.total} (${pct}%) | epoch ${s.epoch + 1} | loss ${s.loss.toFixed(4)} | ${eta} left`;
  }

  /** After a step: redraws the terminal line (at most 10 times a second) or prints a line when due. */
  update(s: ProgressState): void {
    const t = this.now();
    if (this.options.tty) {
      if (t - this.shownAt < 100 && s.step < this.total && this.drawn) return;
      this.shownAt = t;
      const width = 24, filled = this.total > 0 ? Math.round((width * s.step) / this.total) : width;
      this.out.write(`\r\x1b[K[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${this.line(s)}`);
      this.drawn = true;
    } else if (this.options.every > 0 && t - this.shownAt >= this.options.every * 1000) {
      this.shownAt = t;
      this.out.write(this.line(s) + '\n');
    }
  }

  /** Erases the terminal line, so that other output starts on a clean line; the next update redraws it. */
  clear(): void {
    if (this.options.tty && this.drawn) this.out.write('\r\x1b[K');
    this.drawn = false;
  }

  /** The end: erases the terminal line. */
  stop(): void {
    this.clear();
  }
}
