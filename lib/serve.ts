/**
 * An HTTP server for a model's predictions (`duat serve`). `POST /predict` with a PNG or JPEG as
 * the request body answers the class, its name and the top probabilities, using the model's own
 * normalisation and class names; `GET /health` describes the model. Requests that arrive together
 * are answered by one batched forward, run on a worker thread: an idle model takes a request at
 * once, and the requests that arrive while a forward runs make the next batch (up to `maxBatch`),
 * so a lone client waits for nothing and a busy server runs large batches. Bad uploads get a 4xx
 * with a message; nothing a client sends stops the server.
 */
import * as http from 'http';
import { AddressInfo } from 'net';

import { decodeImage, prepareImage } from './data/images';
import { ArgumentError, DataError } from './errors';
import { ParaFormer, Prediction, topClasses } from './nn/ParaFormer';
import { checkBool, checkInt, checkOptions, describe } from './validate';

/** Options of {@link serve}. */
export interface ServeOptions {
  /** TCP port; 0 takes a free one (the server's `port` says which). Default 8080. */
  port?: number;
  /** Address to listen on. Default '127.0.0.1' (this machine only); '0.0.0.0' for every interface. */
  host?: string;
  /** Most images in one forward. Default 64. */
  maxBatch?: number;
  /**
   * How long an idle model waits for more requests before a forward, in ms. Default 0: a batch is
   * what arrived during the previous forward, which costs a lone client nothing.
   */
  maxWaitMs?: number;
  /** Largest upload accepted, in bytes (larger: 413). Default 8 MiB. */
  maxBodyBytes?: number;
  /** Most requests waiting for the model (more: 503). Default 4096. */
  maxQueue?: number;
  /** Invert grey levels of every upload (dark digits on a light background). Default false. */
  invert?: boolean;
  /** Classes listed in each answer's `top`. Default 5. */
  top?: number;
}

/** What a server has done so far. */
export interface ServeStats {
  /** HTTP requests received. */
  requests: number;
  /** Predictions answered. */
  predictions: number;
  /** Requests answered with a 4xx or 5xx. */
  errors: number;
  /** Forwards run, and the images they took (images / batches is the mean batch). */
  batches: number;
  images: number;
}

/** A running server: where it listens, its counters, and close(). */
export interface ModelServer {
  url: string;
  port: number;
  stats(): ServeStats;
  /** Stops accepting, answers what is queued, then closes every connection. */
  close(): Promise<void>;
}

interface Pending {
  pixels: Float32Array;
  resolve: (p: Prediction) => void;
  reject: (e: unknown) => void;
}

/** Sends a JSON answer (and nothing if the client is gone). */
function reply(res: http.ServerResponse, status: number, body: object, headers: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) return;
  const text = JSON.stringify(body);
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), ...headers });
  res.end(text);
}

/** The request body, or null once it passes `limit` bytes. */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0, over = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > limit) over = true;
      else chunks.push(c);
    });
    req.on('end', () => resolve(over ? null : Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/**
 * Serves `model` over HTTP until close(). The model must not be trained meanwhile (its lock
 * refuses a training step while a forward runs).
 * @example
 * const server = await duat.serve(duat.load('model.safetensors'), { port: 8080 });
 * // curl --data-binary @digit.png http://127.0.0.1:8080/predict
 * @throws ArgumentError for bad options
 */
export async function serve(model: ParaFormer, options?: ServeOptions): Promise<ModelServer> {
  if (!(model instanceof ParaFormer)) throw new ArgumentError(`Expected a ParaFormer for model but received ${describe(model)}`);
  const o = checkOptions<ServeOptions>(options, 'serve options');
  const port = checkInt(o.port ?? 8080, 'port', 0, 65535);
  const host = o.host ?? '127.0.0.1';
  if (typeof host !== 'string' || host === '') throw new ArgumentError(`Expected a host name or address for host but received ${describe(host)}`);
  const maxBatch = checkInt(o.maxBatch ?? 64, 'maxBatch', 1, 65536);
  const maxWaitMs = checkInt(o.maxWaitMs ?? 0, 'maxWaitMs', 0, 60000);
  const maxBodyBytes = checkInt(o.maxBodyBytes ?? 8 * 2 ** 20, 'maxBodyBytes', 1, 2 ** 31);
  const maxQueue = checkInt(o.maxQueue ?? 4096, 'maxQueue', 1, 2 ** 24);
  const invert = o.invert === undefined ? false : checkBool(o.invert, 'invert');
  const top = checkInt(o.top ?? 5, 'top', 1, model.config.classes);
  const { channels, imageSize, classes, depth, branches } = model.config;
  const names = model.inputSpec?.classNames;
  const stats: ServeStats = { requests: 0, predictions: 0, errors: 0, batches: 0, images: 0 };

  // Dynamic batching: requests queue; one forward at a time takes up to maxBatch of them, at once
  // when the model is idle (after maxWaitMs where that is set), a batch is full, or the previous
  // forward ends.
  const queue: Pending[] = [];
  let running = false;
  let timer: NodeJS.Timeout | undefined;
  const run = async (): Promise<void> => {
    if (timer) clearTimeout(timer);
    timer = undefined;
    if (running || queue.length === 0) return;
    running = true;
    const batch = queue.splice(0, maxBatch);
    const per = channels * imageSize * imageSize;
    const pixels = new Float32Array(batch.length * per);
    batch.forEach((b, i) => pixels.set(b.pixels, i * per));
    try {
      const preds = await model.predict(pixels);
      stats.batches++;
      stats.images += batch.length;
      batch.forEach((b, i) => b.resolve(preds[i]));
    } catch (e) {
      for (const b of batch) b.reject(e);
    } finally {
      running = false;
      if (queue.length > 0) void run();
    }
  };
  const predict = (pixels: Float32Array) => new Promise<Prediction>((resolve, reject) => {
    queue.push({ pixels, resolve, reject });
    if (running) return;
    if (queue.length >= maxBatch || maxWaitMs === 0) void run();
    else timer ??= setTimeout(() => void run(), maxWaitMs);
  });

  const fail = (res: http.ServerResponse, status: number, message: string, headers?: Record<string, string>) => {
    stats.errors++;
    reply(res, status, { error: message }, headers);
  };
  const handle = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    stats.requests++;
    const pathname = new URL(req.url ?? '/', 'http://localhost').pathname;
    if (pathname === '/health') {
      if (req.method !== 'GET' && req.method !== 'HEAD') return fail(res, 405, 'GET /health', { Allow: 'GET' });
      return reply(res, 200, { ok: true, model: `Para-Former-${depth}-${branches}`, imageSize, channels, classes, classNames: names ?? null, device: model.device });
    }
    if (pathname !== '/predict') return fail(res, 404, `no such path: ${pathname} (POST /predict with an image as the body; GET /health)`);
    if (req.method !== 'POST') return fail(res, 405, 'POST an image (PNG or JPEG) as the body of /predict', { Allow: 'POST' });
    const body = await readBody(req, maxBodyBytes);
    if (body === null) return fail(res, 413, `the upload is larger than ${maxBodyBytes} bytes`, { Connection: 'close' });
    if (body.length === 0) return fail(res, 400, 'empty body: send the PNG or JPEG file as the request body (curl --data-binary @image.png)');
    if (queue.length >= maxQueue) return fail(res, 503, `busy: ${queue.length} requests are waiting`, { 'Retry-After': '1' });
    let pixels: Float32Array;
    try {
      pixels = prepareImage(decodeImage(body, 'the upload'), channels, imageSize, { invert });
    } catch (e) {
      if (e instanceof DataError) return fail(res, 400, e.message);
      throw e;
    }
    const p = await predict(pixels);
    stats.predictions++;
    reply(res, 200, { prediction: p.label, class: p.class, probability: p.probability, top: topClasses(p, top, names) });
  };
  const server = http.createServer((req, res) => {
    handle(req, res).catch((e: unknown) => fail(res, 500, e instanceof Error ? `${e.name}: ${e.message}` : String(e)));
  });
  server.on('clientError', (_e, socket) => {
    if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const shown = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    url: `http://${shown}:${address.port}`,
    port: address.port,
    stats: () => ({ ...stats }),
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
      const drain = setInterval(() => {
        if (!running && queue.length === 0) {
          clearInterval(drain);
          server.closeAllConnections();
        }
      }, 5);
    }),
  };
}
