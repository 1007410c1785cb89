// Packing planner and index builder for prefix-shared preference batches.
//
// Pure C++17, no Python or torch: bindings.cpp wraps these for numpy. The numpy oracle in
// tpo_fast/packing/naive.py implements the same specification line for line; the tests
// require identical output. Costs are integers so that both sides agree exactly.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace tpo {

// Input errors; the binding turns them into ValueError.
struct InputError : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

constexpr int64_t kMaxTokenBudget = int64_t(1) << 24;  // keeps every cost sum inside int64
constexpr int64_t kMaxQkPerToken = int64_t(1) << 20;

struct PlanInput {
  const int64_t* prompt;
  const int64_t* chosen;
  const int64_t* rejected;
  int64_t n;
  int64_t token_budget;
  int64_t world_size;
  uint64_t seed;
  uint64_t epoch;
  int64_t qk_per_token;  // cost of one token = cost of this many attended (q, k) pairs
  bool drop_overlong;
};

struct Plan {
  // Bins in step-major, rank-minor order: bin b runs on rank b % world_size at step b / world_size.
  std::vector<int64_t> bin_offsets;  // [B + 1] into pair_index
  std::vector<int64_t> pair_index;   // pairs of every bin, in bin order
  std::vector<int64_t> bin_tokens;   // [B]
  std::vector<int64_t> bin_cost;     // [B] in units of 1 / qk_per_token tokens
  std::vector<uint8_t> bin_padding;  // [B] 1 = repeats a pair only so that every rank has work
  std::vector<int64_t> dropped;      // pairs over the budget (drop_overlong)
};

Plan plan_bins(const PlanInput& in);

struct Indices {
  std::vector<int64_t> pair_offsets;  // [n + 1] start of each pair on the packed axis
  std::vector<int64_t> position_ids;  // [T]
  std::vector<int32_t> cu_seqlens_q;  // [2n + 1]
  std::vector<int32_t> cu_seqlens_k;  // [2n + 1]
  std::vector<int64_t> kv_index;      // [sum k]
  std::vector<int64_t> logit_index;   // [N]
  std::vector<int64_t> target_index;  // [N]
  std::vector<int64_t> seq_id;        // [N]
  std::vector<uint8_t> sft_mask;      // [N]
};

Indices build_indices(const int64_t* prompt, const int64_t* chosen, const int64_t* rejected,
                      int64_t n);

}  // namespace tpo
