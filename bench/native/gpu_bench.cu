// gpu_bench.cu: the GPU benchmark, without Node: forward latency of Para-Former-1-n against the
// serial ViT of depth n (Para-Former-n-1) at batch 1, 8 and 64, issued eagerly by the host (what
// the library does) and replayed from a captured CUDA graph, with the launches per forward; and
// training throughput (a whole step: forward, loss, backward, clipping norm, AdamW, the one read
// back) at batch 64. Every number comes from the engine's own model and step on DEVICE_CUDA.
// PyTorch's numbers on the same models come from bench/reference/gpu_latency_torch.py in the same
// invocation (scripts/gpu-suite.sh --bench). bench/results/gpu-*.md record the runs.
//
//   duat_gpu_bench [--precision fp32|tf32|bf16] [--reps R] [--max-n N] [--train] [--out results.md]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cuda/kernels.h"
#include "model/model.h"
#include "ops/ops.h"
#include "train/step.h"
#include "bench_util.h"

using namespace duat;

namespace {

// The benchmark's model: ViT-Tiny's width on 32 x 32 x 3 inputs with 4 x 4 patches (65 tokens).
ModelConfig tiny_config(int64_t depth, int64_t branches) {
  ModelConfig c;
  c.image_size = 32, c.patch_size = 4, c.channels = 3, c.classes = 10;
  c.dim = 192, c.heads = 3, c.mlp_hidden = 768, c.depth = depth, c.branches = branches;
  return c;
}

std::vector<Tensor> device_params(const ModelConfig& c, uint64_t seed) {
  std::vector<Tensor> list;
  const std::vector<Shape> shapes = model_param_shapes(c);
  for (size_t i = 0; i < shapes.size(); i++) list.push_back(randn(shapes[i], seed + i, 0.0f, 0.05f, DEVICE_CUDA));
  return list;
}

using duat_bench::median;

struct Timing {
  double eager_ms = 0, graph_ms = 0;
  int64_t launches = 0;
};

// Median milliseconds of `reps` forwards, eager and as one replayed graph.
Timing time_forward(Model& m, int64_t B, int reps) {
  GradMode no_grad(false);
  const ModelConfig& c = m.config();
  const Tensor images = randn({B, c.channels, c.image_size, c.image_size}, 1, 0.0f, 1.0f, DEVICE_CUDA);
  cudaStream_t s = cuda::stream();
  for (int i = 0; i < 5; i++) m.forward(images);  // derived weights cached, allocator warm
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  Timing t;
  std::vector<double> eager;
  for (int r = 0; r < reps; r++) {
    const int64_t l0 = cuda::launch_count();
    cudaEventRecord(a, s);
    m.forward(images);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    eager.push_back(ms);
    t.launches = cuda::launch_count() - l0;
  }
  t.eager_ms = median(eager);
  // The same launches captured once and replayed. Blocks a captured forward frees are held until
  // the graph is gone (its replays write them), so that forward needs a block for every tensor it
  // makes, not the few an eager forward reuses. One forward with frees held first, outside the
  // capture, leaves those blocks in the allocator's cache: no cudaMalloc while capturing, which
  // the driver refuses.
  cuda::hold_frees(true);
  m.forward(images);
  cuda::hold_frees(false);
  cuda::check_cuda(cudaStreamSynchronize(s), "forward before capture");
  cuda::hold_frees(true);
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  cuda::check_cuda(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal), "capture");
  Tensor logits = m.forward(images);
  cuda::check_cuda(cudaStreamEndCapture(s, &graph), "capture");
  cuda::check_cuda(cudaGraphInstantiate(&exec, graph, 0), "instantiate");
  std::vector<double> replay;
  for (int r = 0; r < reps; r++) {
    cudaEventRecord(a, s);
    cudaGraphLaunch(exec, s);
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    replay.push_back(ms);
  }
  t.graph_ms = median(replay);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  logits = nullptr;
  cuda::hold_frees(false);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return t;
}

// Images per second of whole training steps at batch B.
double time_training(Model& m, int64_t B, int reps) {
  const ModelConfig& c = m.config();
  Optimizer opt(OPTIMIZER_ADAMW, m.params(), std::vector<int>(m.params().size(), 0));
  const Tensor images = randn({B, c.channels, c.image_size, c.image_size}, 2, 0.0f, 1.0f, DEVICE_CUDA);
  Tensor labels = empty({B}, DTYPE_I32);
  for (int64_t i = 0; i < B; i++) labels->i32()[i] = static_cast<int32_t>(i % c.classes);
  labels = to_device(labels, DEVICE_CUDA);
  GroupOptions g;
  g.weight_decay = 0.05;
  StepOptions o;
  o.clip_grad_norm = 1.0f;
  for (int i = 0; i < 3; i++) train_step(m, images, labels, &opt, {g}, o);
  std::vector<double> ms;
  for (int r = 0; r < reps; r++) {
    const auto t0 = std::chrono::steady_clock::now();
    train_step(m, images, labels, &opt, {g}, o);  // ends with the step's one read-back
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  return static_cast<double>(B) / (median(ms) / 1000.0);
}

std::string format(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  Precision precision = PRECISION_TF32;
  int reps = 50, max_n = 16;
  bool train = false;
  const char* out_path = nullptr;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    if (a == "--reps" && i + 1 < argc) reps = std::stoi(argv[++i]);
    else if (a == "--max-n" && i + 1 < argc) max_n = std::stoi(argv[++i]);
    else if (a == "--train") train = true;
    else if (a == "--out" && i + 1 < argc) out_path = argv[++i];
    else if (a == "--precision" && i + 1 < argc) {
      const std::string p = argv[++i];
      precision = p == "fp32" ? PRECISION_FP32 : p == "bf16" ? PRECISION_BF16 : PRECISION_TF32;
    } else {
      std::fprintf(stderr, "unknown argument %s\n", a.c_str());
      return 2;
    }
  }
  const CudaInfo& st = cuda_probe();
  if (!st.available) {
    std::printf("CUDA unusable, GPU benchmark skipped: %s\n", st.reason.c_str());
    return 2;
  }
  std::string md = "device " + st.device + ", precision " + precision_name(cuda::effective_precision(precision)) +
                   ", medians of " + std::to_string(reps) + "\n\n";
  try {
    md += "| n | launches PF-1-n | launches ViT-n | PF-1-n b1 eager | PF-1-n b1 graph | ViT-n b1 eager | ViT-n b1 graph |"
          " PF-1-n b8 eager | ViT-n b8 eager | PF-1-n b64 eager | ViT-n b64 eager |\n|---|---|---|---|---|---|---|---|---|---|---|\n";
    for (int n : {1, 2, 4, 8, 12, 16}) {
      if (n > max_n) break;
      Model pf(tiny_config(1, n), device_params(tiny_config(1, n), 1), precision);
      Model vit(tiny_config(n, 1), device_params(tiny_config(n, 1), 1), precision);
      const Timing p1 = time_forward(pf, 1, reps), v1 = time_forward(vit, 1, reps);
      const Timing p8 = time_forward(pf, 8, reps), v8 = time_forward(vit, 8, reps);
      const Timing p64 = time_forward(pf, 64, reps), v64 = time_forward(vit, 64, reps);
      md += "| " + std::to_string(n) + " | " + std::to_string(p1.launches) + " | " + std::to_string(v1.launches) + " | " +
            format("%.3f", p1.eager_ms) + " | " + format("%.3f", p1.graph_ms) + " | " + format("%.3f", v1.eager_ms) + " | " +
            format("%.3f", v1.graph_ms) + " | " + format("%.3f", p8.eager_ms) + " | " + format("%.3f", v8.eager_ms) +
            " | " + format("%.3f", p64.eager_ms) + " | " + format("%.3f", v64.eager_ms) + " |\n";
      std::printf("n %d done\n", n);
    }
    if (train) {
      md += "\nTraining throughput, batch 64, images/s (a whole step: forward, loss, backward, norm, AdamW, one read-back)\n\n"
            "| n | PF-1-n | ViT-n |\n|---|---|---|\n";
      for (int n : {1, 4, 8, 12}) {
        Model pf(tiny_config(1, n), device_params(tiny_config(1, n), 3), precision);
        Model vit(tiny_config(n, 1), device_params(tiny_config(n, 1), 3), precision);
        md += "| " + std::to_string(n) + " | " + format("%.0f", time_training(pf, 64, reps)) + " | " +
              format("%.0f", time_training(vit, 64, reps)) + " |\n";
      }
    }
  } catch (const std::exception& e) {
    std::printf("FAIL %s\n", e.what());
    return 1;
  }
  std::printf("\n%s", md.c_str());
  if (out_path) {
    FILE* f = std::fopen(out_path, "w");
    if (f) {
      std::fprintf(f, "%s", md.c_str());
      std::fclose(f);
    }
  }
  return 0;
}
