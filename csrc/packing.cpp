// See packing.h. The numpy oracle (tpo_fast/packing/naive.py) follows the same steps.
#include "packing.h"

#include <algorithm>
#include <climits>
#include <numeric>

namespace tpo {
namespace {

const char* const kField[3] = {"prompt", "chosen", "rejected"};

void check_lengths(const int64_t* const len[3], int64_t n) {
  if (n < 1) throw InputError("no pairs given");
  for (int64_t i = 0; i < n; ++i)
    for (int f = 0; f < 3; ++f)
      if (len[f][i] < 1)
        throw InputError("pair " + std::to_string(i) + ": " + kField[f] + " length " +
                         std::to_string(len[f][i]) +
                         " (every prompt and response needs at least one token)");
}

// splitmix64: tiny, fully specified, and easy to reproduce bit for bit in Python.
struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
  }
  template <typename T>
  void shuffle(T* v, int64_t n) {  // Fisher-Yates, high index first
    for (int64_t i = n - 1; i > 0; --i) std::swap(v[i], v[next() % uint64_t(i + 1)]);
  }
};

// Max-segment-tree over bin capacities. Unopened bins hold the full budget, and every open bin
// precedes every unopened one, so "leftmost leaf with room" is exactly first fit.
class FirstFitTree {
 public:
  FirstFitTree(int64_t leaves, int64_t capacity) {
    size_ = 1;
    while (size_ < leaves) size_ <<= 1;
    tree_.assign(2 * size_, capacity);
  }
  int64_t leftmost_with_room(int64_t need) const {
    int64_t node = 1;
    while (node < size_) node = tree_[2 * node] >= need ? 2 * node : 2 * node + 1;
    return node - size_;
  }
  void take(int64_t leaf, int64_t amount) {
    int64_t node = leaf + size_;
    tree_[node] -= amount;
    for (node >>= 1; node >= 1; node >>= 1)
      tree_[node] = std::max(tree_[2 * node], tree_[2 * node + 1]);
  }

 private:
  int64_t size_;
  std::vector<int64_t> tree_;
};

}  // namespace

Plan plan_bins(const PlanInput& in) {
  const int64_t* const len[3] = {in.prompt, in.chosen, in.rejected};
  check_lengths(len, in.n);
  if (in.token_budget < 1 || in.token_budget > kMaxTokenBudget)
    throw InputError("token_budget must be in [1, " + std::to_string(kMaxTokenBudget) +
                     "], got " + std::to_string(in.token_budget));
  if (in.world_size < 1)
    throw InputError("world_size must be >= 1, got " + std::to_string(in.world_size));
  if (in.qk_per_token < 1 || in.qk_per_token > kMaxQkPerToken)
    throw InputError("qk_per_token must be in [1, " + std::to_string(kMaxQkPerToken) +
                     "], got " + std::to_string(in.qk_per_token));

  Plan plan;
  std::vector<int64_t> kept, tokens(in.n, 0), cost(in.n, 0);
  kept.reserve(in.n);
  for (int64_t i = 0; i < in.n; ++i) {
    const int64_t p = in.prompt[i], c = in.chosen[i], r = in.rejected[i], B = in.token_budget;
    if (p > B || c > B || r > B || p + c + r > B) {  // per-field test first: no overflow
      if (!in.drop_overlong)
        throw InputError("pair " + std::to_string(i) + " (prompt " + std::to_string(p) +
                         " + chosen " + std::to_string(c) + " + rejected " + std::to_string(r) +
                         " tokens) exceeds token_budget " + std::to_string(B) +
                         "; raise the budget or pass drop_overlong=True");
      plan.dropped.push_back(i);
      continue;
    }
    tokens[i] = p + c + r;
    // Linear layers cost per token; attention per (query, key) pair of the two segments.
    cost[i] = tokens[i] * in.qk_per_token + (p + c) * (p + c) + r * (p + r);
    kept.push_back(i);
  }
  const int64_t n_kept = int64_t(kept.size());
  if (n_kept < in.world_size)
    throw InputError(std::to_string(n_kept) + " pairs to plan (" +
                     std::to_string(plan.dropped.size()) + " dropped as over the budget) for " +
                     std::to_string(in.world_size) +
                     " ranks: every rank needs at least one pair every step");

  // First fit, most expensive pair first; ties by pair index.
  std::vector<int64_t> order = kept;
  std::sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return cost[a] != cost[b] ? cost[a] > cost[b] : a < b;
  });
  std::vector<std::vector<int64_t>> bins;
  FirstFitTree tree(n_kept, in.token_budget);
  for (int64_t i : order) {
    const int64_t b = tree.leftmost_with_room(tokens[i]);
    if (b == int64_t(bins.size())) bins.emplace_back();
    bins[b].push_back(i);
    tree.take(b, tokens[i]);
  }

  // Every step needs one bin per rank: split the fullest bins (their odd-position pairs move to
  // a new bin), and where no bin has two pairs left, repeat the cheapest pair as padding.
  std::vector<uint8_t> padding(bins.size(), 0);
  while (bins.size() % in.world_size != 0) {
    size_t fullest = 0;
    for (size_t b = 1; b < bins.size(); ++b)
      if (bins[b].size() > bins[fullest].size()) fullest = b;
    if (bins[fullest].size() < 2) break;
    std::vector<int64_t> keep, moved;
    for (size_t k = 0; k < bins[fullest].size(); ++k)
      (k % 2 ? moved : keep).push_back(bins[fullest][k]);
    bins[fullest] = std::move(keep);
    bins.push_back(std::move(moved));
    padding.push_back(0);
  }
  while (bins.size() % in.world_size != 0) {
    bins.push_back({order.back()});
    padding.push_back(1);
  }

  const int64_t n_bins = int64_t(bins.size());
  std::vector<int64_t> tok(n_bins, 0), cst(n_bins, 0);
  for (int64_t b = 0; b < n_bins; ++b)
    for (int64_t i : bins[b]) tok[b] += tokens[i], cst[b] += cost[i];

  // Bins of similar cost share a step, so ranks wait little for each other; then the order of
  // steps, and of ranks inside each step, is shuffled for this seed and epoch.
  std::vector<int64_t> by_cost(n_bins);
  std::iota(by_cost.begin(), by_cost.end(), 0);
  std::sort(by_cost.begin(), by_cost.end(), [&](int64_t a, int64_t b) {
    return cst[a] != cst[b] ? cst[a] > cst[b] : a < b;
  });
  const int64_t W = in.world_size, n_steps = n_bins / W;
  std::vector<int64_t> steps(n_steps);
  std::iota(steps.begin(), steps.end(), 0);
  SplitMix64 rng{in.seed ^ (in.epoch * 0xD1B54A32D192ED03ULL)};
  rng.shuffle(steps.data(), n_steps);

  plan.bin_offsets.reserve(n_bins + 1);
  plan.bin_offsets.push_back(0);
  plan.pair_index.reserve(n_kept + n_bins);
  std::vector<int64_t> slot(W);
  for (int64_t s : steps) {
    std::copy(by_cost.begin() + s * W, by_cost.begin() + (s + 1) * W, slot.begin());
    rng.shuffle(slot.data(), W);
    for (int64_t b : slot) {
      plan.pair_index.insert(plan.pair_index.end(), bins[b].begin(), bins[b].end());
      plan.bin_offsets.push_back(int64_t(plan.pair_index.size()));
      plan.bin_tokens.push_back(tok[b]);
      plan.bin_cost.push_back(cst[b]);
      plan.bin_padding.push_back(padding[b]);
    }
  }
  return plan;
}

Indices build_indices(const int64_t* prompt, const int64_t* chosen, const int64_t* rejected,
                      int64_t n) {
  const int64_t* const len[3] = {prompt, chosen, rejected};
  check_lengths(len, n);
  int64_t total = 0, keys = 0, scored = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (prompt[i] > INT32_MAX || chosen[i] > INT32_MAX || rejected[i] > INT32_MAX)
      throw InputError("pair " + std::to_string(i) + ": length over 2^31 - 1");
    total += prompt[i] + chosen[i] + rejected[i];
    keys += 2 * prompt[i] + chosen[i] + rejected[i];
    scored += chosen[i] + rejected[i];
    if (keys > INT32_MAX)  // flash-attn's cu_seqlens are int32
      throw InputError("micro-batch over 2^31 - 1 key slots; lower the token budget");
  }

  Indices out;
  out.pair_offsets.resize(n + 1);
  out.position_ids.resize(total);
  out.cu_seqlens_q.resize(2 * n + 1);
  out.cu_seqlens_k.resize(2 * n + 1);
  out.kv_index.resize(keys);
  out.logit_index.resize(scored);
  out.target_index.resize(scored);
  out.seq_id.resize(scored);
  out.sft_mask.resize(scored);

  // Filled through raw pointers: plain counting loops that the compiler vectorises.
  int64_t* pos = out.position_ids.data();
  int64_t* kv = out.kv_index.data();
  int64_t* logit = out.logit_index.data();
  int64_t* target = out.target_index.data();
  int64_t* seq = out.seq_id.data();
  uint8_t* sft = out.sft_mask.data();
  int64_t base = 0, k_end = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t P = prompt[i], C = chosen[i], R = rejected[i];
    const int64_t rej = base + P + C;  // first rejected token on the packed axis
    out.pair_offsets[i] = base;
    // Tokens [prompt | chosen | rejected]; rejected tokens take the chosen tokens' positions.
    for (int64_t t = 0; t < P + C; ++t) *pos++ = t;
    for (int64_t t = 0; t < R; ++t) *pos++ = P + t;
    // Query segments: prompt+chosen, then rejected; key segments: prompt+chosen, prompt+rejected.
    out.cu_seqlens_q[2 * i + 1] = int32_t(rej);
    out.cu_seqlens_q[2 * i + 2] = int32_t(rej + R);
    out.cu_seqlens_k[2 * i + 1] = int32_t(k_end += P + C);
    out.cu_seqlens_k[2 * i + 2] = int32_t(k_end += P + R);
    for (int64_t t = 0; t < P + C; ++t) *kv++ = base + t;
    for (int64_t t = 0; t < P; ++t) *kv++ = base + t;
    for (int64_t t = 0; t < R; ++t) *kv++ = rej + t;
    // Scored tokens: the hidden state before each response token predicts it; the first
    // rejected token is predicted by the last prompt token.
    for (int64_t t = 0; t < C; ++t) *target++ = base + P + t, *logit++ = base + P + t - 1;
    for (int64_t t = 0; t < R; ++t) *target++ = rej + t, *logit++ = rej + t - 1;
    logit[-R] = base + P - 1;
    std::fill(seq, seq + C, 2 * i);
    std::fill(seq + C, seq + C + R, 2 * i + 1);
    std::fill(sft, sft + C, uint8_t(1));
    std::fill(sft + C, sft + C + R, uint8_t(0));
    seq += C + R, sft += C + R;
    base = rej + R;
  }
  out.pair_offsets[n] = base;
  return out;
}

}  // namespace tpo
