// derived.h: the inference cache of weights derived from parameters (the folded LayerNorm
// affines of QKV and fc1, the fc2 matrices side by side). A forward that records a graph
// (training) derives them inside the graph every time, since the parameters change every step;
// without a graph (inference) they are derived once per version of their sources and kept with
// the first source's storage (Storage::derived), so they are freed with it. An entry is used only
// while every source storage is alive and at the version (Storage::version, bumped by every
// in-place write) it was derived from. Entries live on their sources' device.
#pragma once
#include <functional>
#include <vector>

#include "../core/tensor.h"

namespace duat {

// Inference weights are kept K-major (k_major in paraformer.cpp), and on the CPU packed too
// (pack_weight, ops.h): a product reads the packed panels (or, where they do not serve, the
// K-major weight in place) instead of packing them on every call.
enum DerivedKind { DERIVED_QKV, DERIVED_FC1, DERIVED_FC2, DERIVED_LS1, DERIVED_LS2, DERIVED_PROJ };

// derive() itself while grad mode is on; otherwise the cached result for (kind, sources), derived
// anew when a source changed.
std::vector<Tensor> derived(DerivedKind kind, const std::vector<Tensor>& sources,
                            const std::function<std::vector<Tensor>()>& derive);
// Drops every entry (their storage goes back to the devices' caches).
void clear_derived_weights();

}  // namespace duat
