// tpo_fast._C: a thin, checked numpy binding over packing.cpp. Inputs are 1-D integer arrays
// (any integer dtype; converted to int64); outputs are numpy arrays that own the C++ buffers,
// so torch.from_numpy on them copies nothing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <memory>

#include "packing.h"

namespace py = pybind11;
using Int64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

Int64Array as_lengths(const py::array& a, const char* name, py::ssize_t expect) {
  if (a.ndim() != 1)
    throw py::value_error(std::string(name) + " must be 1-D, got " + std::to_string(a.ndim()) +
                          " dimensions");
  const char kind = a.dtype().kind();
  if (kind != 'i' && kind != 'u')
    throw py::value_error(std::string(name) + " must hold integers, got dtype " +
                          std::string(py::str(a.dtype())));
  if (expect >= 0 && a.shape(0) != expect)
    throw py::value_error(std::string(name) + " has " + std::to_string(a.shape(0)) +
                          " entries but prompt_lens has " + std::to_string(expect));
  return Int64Array::ensure(a);
}

template <typename T>
py::array_t<T> to_numpy(std::vector<T>&& v) {
  auto* owner = new std::vector<T>(std::move(v));
  py::capsule free_it(owner, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array_t<T>(py::ssize_t(owner->size()), owner->data(), free_it);
}

py::array to_bool(std::vector<uint8_t>&& v) {
  return to_numpy(std::move(v)).attr("view")("bool");
}

py::dict plan_bins(const py::array& prompt, const py::array& chosen, const py::array& rejected,
                   int64_t token_budget, int64_t world_size, uint64_t seed, uint64_t epoch,
                   int64_t qk_per_token, bool drop_overlong) {
  auto p = as_lengths(prompt, "prompt_lens", -1);
  auto c = as_lengths(chosen, "chosen_lens", p.shape(0));
  auto r = as_lengths(rejected, "rejected_lens", p.shape(0));
  tpo::PlanInput in{p.data(), c.data(), r.data(), p.shape(0), token_budget, world_size,
                    seed,     epoch,    qk_per_token, drop_overlong};
  tpo::Plan plan;
  {
    py::gil_scoped_release release;
    plan = tpo::plan_bins(in);
  }
  py::dict out;
  out["bin_offsets"] = to_numpy(std::move(plan.bin_offsets));
  out["pair_index"] = to_numpy(std::move(plan.pair_index));
  out["bin_tokens"] = to_numpy(std::move(plan.bin_tokens));
  out["bin_cost"] = to_numpy(std::move(plan.bin_cost));
  out["bin_padding"] = to_bool(std::move(plan.bin_padding));
  out["dropped"] = to_numpy(std::move(plan.dropped));
  return out;
}

py::dict build_indices(const py::array& prompt, const py::array& chosen,
                       const py::array& rejected) {
  auto p = as_lengths(prompt, "prompt_lens", -1);
  auto c = as_lengths(chosen, "chosen_lens", p.shape(0));
  auto r = as_lengths(rejected, "rejected_lens", p.shape(0));
  tpo::Indices ix;
  {
    py::gil_scoped_release release;
    ix = tpo::build_indices(p.data(), c.data(), r.data(), p.shape(0));
  }
  py::dict out;
  out["pair_offsets"] = to_numpy(std::move(ix.pair_offsets));
  out["position_ids"] = to_numpy(std::move(ix.position_ids));
  out["cu_seqlens_q"] = to_numpy(std::move(ix.cu_seqlens_q));
  out["cu_seqlens_k"] = to_numpy(std::move(ix.cu_seqlens_k));
  out["kv_index"] = to_numpy(std::move(ix.kv_index));
  out["logit_index"] = to_numpy(std::move(ix.logit_index));
  out["target_index"] = to_numpy(std::move(ix.target_index));
  out["seq_id"] = to_numpy(std::move(ix.seq_id));
  out["sft_mask"] = to_bool(std::move(ix.sft_mask));
  return out;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "tpo_fast native packing planner and index builder (see csrc/packing.h)";
  py::register_exception<tpo::InputError>(m, "PackingInputError", PyExc_ValueError);
  m.attr("MAX_TOKEN_BUDGET") = tpo::kMaxTokenBudget;
  m.attr("MAX_QK_PER_TOKEN") = tpo::kMaxQkPerToken;
  m.def("plan_bins", &plan_bins, py::arg("prompt_lens"), py::arg("chosen_lens"),
        py::arg("rejected_lens"), py::arg("token_budget"), py::arg("world_size"),
        py::arg("seed"), py::arg("epoch"), py::arg("qk_per_token"), py::arg("drop_overlong"),
        "Assign pairs to micro-batches (bins) and ranks; returns a dict of numpy arrays.");
  m.def("build_indices", &build_indices, py::arg("prompt_lens"), py::arg("chosen_lens"),
        py::arg("rejected_lens"),
        "PackedBatch index arrays for one micro-batch; returns a dict of numpy arrays.");
}
