// derived.cpp: the inference cache of derived weights (derived.h).
#include "derived.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <string>
#include <unordered_map>

#include "../core/autograd.h"

namespace duat {

// An entry of the cache: what its key (below) does not hold of its sources, and its values.
struct DerivedEntry {
  std::vector<std::weak_ptr<Storage>> sources;  // alive, and at these versions, for the values to be current
  std::vector<uint64_t> versions;
  std::vector<Tensor> values;
};

namespace {

// What an entry is derived from: its kind and each source's storage, offset and size (a model's
// first k branches are a view at the same offset as all of them). Built on every lookup, so it
// holds no heap memory (a key made of strings cost a dozen allocations a lookup, four lookups a
// stage).
struct DerivedKey {
  static constexpr size_t MAX_SOURCES = 4;
  int kind = 0;
  size_t n = 0;
  std::array<const Storage*, MAX_SOURCES> storage{};
  std::array<int64_t, MAX_SOURCES> offset{}, numel{};
  bool operator==(const DerivedKey& o) const {
    return kind == o.kind && n == o.n && storage == o.storage && offset == o.offset && numel == o.numel;
  }
};

struct DerivedKeyHash {
  size_t operator()(const DerivedKey& k) const {
    size_t h = std::hash<int>()(k.kind);
    auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    for (size_t i = 0; i < k.n; i++) {
      mix(std::hash<const Storage*>()(k.storage[i]));
      mix(std::hash<int64_t>()(k.offset[i]));
      mix(std::hash<int64_t>()(k.numel[i]));
    }
    return h;
  }
};

}  // namespace

// The entries kept with one storage, by kind and the sources' identity.
struct DerivedSlot {
  std::unordered_map<DerivedKey, DerivedEntry, DerivedKeyHash> entries;
};

namespace {

struct DerivedRegistry {
  std::mutex mu;
  std::vector<std::weak_ptr<DerivedSlot>> slots;  // every slot made, for clear_derived_weights
};

DerivedRegistry& registry() {
  static DerivedRegistry* r = new DerivedRegistry();  // never destroyed: storages may outlive statics
  return *r;
}

}  // namespace

std::vector<Tensor> derived(DerivedKind kind, const std::vector<Tensor>& sources,
                            const std::function<std::vector<Tensor>()>& derive) {
  if (grad_enabled()) return derive();
  DUAT_CHECK(!sources.empty() && sources.size() <= DerivedKey::MAX_SOURCES, ERROR_ARGUMENT,
             "derived: 1 to " + std::to_string(DerivedKey::MAX_SOURCES) + " sources, got " + std::to_string(sources.size()));
  DerivedKey key;
  key.kind = kind;
  key.n = sources.size();
  for (size_t i = 0; i < sources.size(); i++) {
    key.storage[i] = sources[i]->storage.get();
    key.offset[i] = sources[i]->offset;
    key.numel[i] = sources[i]->numel();
  }
  DerivedRegistry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  Storage& home = *sources[0]->storage;
  if (home.derived) {
    auto it = home.derived->entries.find(key);
    if (it != home.derived->entries.end()) {
      const DerivedEntry& e = it->second;
      bool current = true;
      for (size_t i = 0; i < sources.size() && current; i++)
        current = e.sources[i].lock() == sources[i]->storage &&
                  e.versions[i] == sources[i]->storage->version.load(std::memory_order_relaxed);
      if (current) return e.values;
    }
  } else {
    home.derived = std::make_shared<DerivedSlot>();
    if (r.slots.size() >= 64)  // forget slots whose storage is gone
      r.slots.erase(std::remove_if(r.slots.begin(), r.slots.end(), [](const auto& w) { return w.expired(); }),
                    r.slots.end());
    r.slots.push_back(home.derived);
  }
  DerivedEntry e;
  for (const Tensor& t : sources) {
    e.sources.push_back(t->storage);
    e.versions.push_back(t->storage->version.load(std::memory_order_relaxed));
  }
  e.values = derive();
  home.derived->entries[key] = e;
  return e.values;
}

void clear_derived_weights() {
  DerivedRegistry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  for (const auto& w : r.slots)
    if (auto slot = w.lock()) slot->entries.clear();
  r.slots.clear();
}

}  // namespace duat
