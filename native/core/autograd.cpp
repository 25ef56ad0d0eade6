// autograd.cpp: recording and the reverse topological walk.
#include "autograd.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace duat {

namespace {
thread_local bool t_grad_enabled = true;
std::atomic<bool> g_profiling{false};
std::mutex g_profile_mutex;
std::map<std::string, std::pair<double, int64_t>> g_profile;
}

void set_backward_profiling(bool on) { g_profiling = on; }

std::vector<NodeProfile> backward_profile() {
  std::lock_guard<std::mutex> lock(g_profile_mutex);
  std::vector<NodeProfile> out;
  for (auto& [name, v] : g_profile) out.push_back({name, v.first, v.second});
  g_profile.clear();
  std::sort(out.begin(), out.end(), [](const NodeProfile& a, const NodeProfile& b) { return a.seconds > b.seconds; });
  return out;
}

bool grad_enabled() { return t_grad_enabled; }
void set_grad_enabled(bool enabled) { t_grad_enabled = enabled; }

Tensor Grads::make_slot(size_t i) const {
  const TensorImpl& in = *inputs_[i];
  auto like = std::make_shared<TensorImpl>();  // a metadata-only twin of the input
  like->shape = in.shape;
  like->strides = in.strides;
  like->dtype = DTYPE_F32;
  like->device = in.device;
  return empty_like_layout(like);
}

Tensor& Grads::slot(size_t i) {
  if (!slots_[i]) {
    slots_[i] = make_slot(i);
    if (slots_[i]->numel()) backend(slots_[i]->device).fill(slots_[i]->storage->data, slots_[i]->numel(), 0u);
  }
  return slots_[i];
}

Tensor& Grads::slot_for_write(size_t i, bool* fresh) {
  *fresh = !slots_[i];
  if (*fresh) slots_[i] = make_slot(i);
  return slots_[i];
}

Tensor& Grads::contiguous_slot(size_t i) {
  if (!slots_[i]) {
    slots_[i] = zeros(inputs_[i]->shape, DTYPE_F32, inputs_[i]->device);
  } else if (!slots_[i]->is_contiguous()) {
    slots_[i] = contiguous_data(slots_[i]);
  }
  return slots_[i];
}

Tensor& Grads::contiguous_slot_for_write(size_t i, bool* fresh) {
  *fresh = !slots_[i];
  if (*fresh) {
    slots_[i] = empty(inputs_[i]->shape, DTYPE_F32, inputs_[i]->device);
  } else if (!slots_[i]->is_contiguous()) {
    slots_[i] = contiguous_data(slots_[i]);
  }
  return slots_[i];
}

void Grads::add(size_t i, const Tensor& g) { add_into(slot(i), g); }

Tensor Grads::reusable(const Tensor& dout) const {
  const bool own = dout_owned_ && !dout_passed_ && dout->storage.get() == dout_storage_ && dout.use_count() == 1 &&
                   dout->storage.use_count() == 1;
  if (own) return dout;
  return empty_like_layout(dout);  // laid out like dout where that is dense (padded rows: contiguous)
}

void Grads::pass(size_t i, const Tensor& g) {
  const TensorImpl& in = *inputs_[i];
  // Dense, or laid out exactly like the input (padded rows, ops/branch.cpp).
  const bool fits =
      !slots_[i] && g->shape == in.shape && g->device == in.device && (same_layout(*g, in) || is_dense(g));
  // A view of the walk's own incoming gradient, handed on once...
  if (fits && dout_owned_ && !dout_passed_ && g->storage.get() == dout_storage_) {
    slots_[i] = g;
    dout_passed_ = true;
    return;
  }
  // ...or a tensor the backward function just made, which nothing else references.
  if (fits && g->storage.get() != dout_storage_ && g.use_count() == 1 && g->storage.use_count() == 1) {
    slots_[i] = g;
    return;
  }
  add(i, g);
}

bool any_requires_grad(const Tensor* first, const Tensor* last) {
  if (!t_grad_enabled) return false;
  for (; first != last; ++first)
    if (*first && (*first)->requires_grad) return true;
  return false;
}

Tensor record(const Tensor& out, const char* name, const std::vector<Tensor>& inputs, BackwardFn fn) {
  if (!any_requires_grad(inputs)) return out;
  auto node = std::make_shared<Node>();
  node->name = name;
  node->inputs.reserve(inputs.size());
  for (const Tensor& t : inputs) node->inputs.push_back(t && t->requires_grad ? t : nullptr);
  node->backward_fn = std::move(fn);
  out->requires_grad = true;
  out->grad_fn = std::move(node);
  return out;
}

void backward(const Tensor& root, const Tensor& seed) {
  DUAT_CHECK(root->requires_grad, ERROR_STATE,
             "backward: the tensor does not require grad (no input had requiresGrad, or it was made under noGrad)");
  if (root->grad_fn) {
    DUAT_CHECK(static_cast<bool>(root->grad_fn->backward_fn), ERROR_STATE,
               "backward: the graph behind this tensor was already freed by an earlier backward()");
  }
  Tensor dseed = seed;
  if (!dseed) {
    DUAT_CHECK(root->numel() == 1, ERROR_SHAPE,
               "backward: the tensor has shape " + shape_str(root->shape) + "; give a gradient or reduce it to one element");
    dseed = full(root->shape, 1.0f, root->device);
  } else {
    DUAT_CHECK(dseed->shape == root->shape, ERROR_SHAPE,
               "backward: gradient shape " + shape_str(dseed->shape) + " does not match tensor shape " + shape_str(root->shape));
    check_f32(dseed, "backward", "the gradient");
    check_same_device(root, dseed, "backward");
  }
  GradMode no_grad(false);  // backward functions compose ops; nothing they do is recorded

  // Reverse topological order by iterative depth-first search over grad_fn edges.
  std::vector<Tensor> order;
  std::unordered_set<TensorImpl*> visited;
  std::vector<std::pair<Tensor, size_t>> stack{{root, 0}};
  visited.insert(root.get());
  while (!stack.empty()) {
    auto& [t, next] = stack.back();
    Node* node = t->grad_fn.get();
    if (node && next < node->inputs.size()) {
      Tensor in = node->inputs[next++];
      if (in && visited.insert(in.get()).second) stack.push_back({in, 0});
      continue;
    }
    order.push_back(t);
    stack.pop_back();
  }

  std::unordered_map<TensorImpl*, Tensor> pending;
  pending[root.get()] = dseed;
  for (size_t k = order.size(); k-- > 0;) {
    // Taken out of `order`: once its backward has run, nothing of the walk holds t, so its
    // storage (and what its node saved) is freed as the walk passes, not when it ends. Its inputs
    // come later in the walk and are still held by `order`, so `pending`'s keys stay valid.
    Tensor t = std::move(order[k]);
    auto it = pending.find(t.get());
    if (it == pending.end()) continue;
    Tensor dout = it->second;
    pending.erase(it);
    // Laid out like t when t is dense (a gradient slot made for it), contiguous otherwise.
    if (!same_layout(dout, t) && !(dout->is_contiguous() && !is_dense(t))) {
      Tensor d = empty_like_layout(t);
      copy_into(d, dout);
      dout = d;
    }
    if (!t->grad_fn) {
      // A leaf: accumulate into .grad. A gradient the walk made itself is taken over as it is;
      // the caller's seed is copied, so .grad never aliases a user's tensor.
      if (!t->grad) {
        if (dout != dseed && dout->is_contiguous()) {
          t->grad = dout;
        } else {
          t->grad = empty(t->shape, DTYPE_F32, t->device);
          copy_into(t->grad, dout);
        }
      } else {
        add_into(t->grad, dout);
      }
      continue;
    }
    std::shared_ptr<Node> node = t->grad_fn;
    DUAT_CHECK(static_cast<bool>(node->backward_fn), ERROR_STATE,
               "backward: part of the graph (" + node->name + ") was already freed by an earlier backward()");
    Grads grads(node->inputs.size());
    grads.dout_owned_ = dout != dseed;
    grads.dout_storage_ = dout->storage.get();
    grads.inputs_.resize(node->inputs.size());
    for (size_t i = 0; i < node->inputs.size(); i++) grads.inputs_[i] = node->inputs[i].get();
    // The gradient an input already has from the consumers walked before becomes this
    // backward's buffer for it, so kernels that can accumulate (GEMM's beta, the row kernels'
    // accumulate flag) add into it as they write instead of a separate pass adding their result
    // (ViT-4's step made twelve such passes over 3200 x 192). Only a gradient nothing but the walk
    // holds, laid out as a fresh buffer for the input would be, and once per input tensor.
    for (size_t i = 0; i < node->inputs.size(); i++) {
      const Tensor& in = node->inputs[i];
      if (!in) continue;
      auto p = pending.find(in.get());
      if (p == pending.end()) continue;
      const Tensor& g = p->second;
      const bool layout = is_dense(in) ? same_layout(g, in) : g->is_contiguous();
      if (g.use_count() != 1 || g->storage.use_count() != 1 || g == dseed || !layout) continue;
      grads.slots_[i] = std::move(p->second);
      pending.erase(p);
    }
    if (g_profiling) {
      const auto t0 = std::chrono::steady_clock::now();
      node->backward_fn(dout, grads);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      std::lock_guard<std::mutex> lock(g_profile_mutex);
      auto& e = g_profile[node->name];
      e.first += dt;
      e.second++;
    } else {
      node->backward_fn(dout, grads);
    }
    node->backward_fn = nullptr;  // frees what the op saved
    for (size_t i = 0; i < node->inputs.size(); i++) {
      const Tensor& in = node->inputs[i];
      if (!in || !grads.slots_[i]) continue;
      auto p = pending.find(in.get());
      if (p == pending.end()) {
        pending[in.get()] = grads.slots_[i];
      } else {
        add_into(p->second, grads.slots_[i]);
      }
    }
    node->inputs.clear();
  }
}

}  // namespace duat
