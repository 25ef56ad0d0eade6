// Serves a model over HTTP, sends it one image as a client would, prints the answer and stops.
//   node examples/serve.js [model.safetensors]   (default: a fresh, untrained model)
const fs = require('fs');
const http = require('http');
const path = require('path');
const duat = require('duat');

async function main() {
  const model = process.argv[2] ? duat.load(process.argv[2]) : new duat.ParaFormer({ patchSize: 7, depth: 2, branches: 2 });
  const server = await duat.serve(model, { port: 0 });   // 0: any free port
  console.log(`listening on ${server.url}`);
  const png = fs.readFileSync(path.join(__dirname, 'digit.png'));
  const answer = await new Promise((resolve, reject) => {
    const req = http.request(`${server.url}/predict`, { method: 'POST', headers: { 'Content-Type': 'image/png' } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve(JSON.parse(body)));
    });
    req.on('error', reject);
    req.end(png);
  });
  console.log(`predicted ${answer.prediction} (${(100 * answer.probability).toFixed(1)}%)`);
  await server.close();
  model.dispose();
}

main();
