// The only pybind11 translation unit of deltairis._core. Each component registers its bindings in a
// function of its own below; the components themselves (csrc/*/) contain no Python headers.
// Rules: validate every buffer (dtype, shape, contiguity) before touching it and raise ValueError
// naming the field; release the GIL around every blocking call.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <atomic>
#include <cstdint>
#include <string>

#include "core/info.h"
#include "core/thread_pool.h"

namespace py = pybind11;

#ifndef DELTAIRIS_VERSION
#define DELTAIRIS_VERSION "0.0.0"
#endif

namespace {

// ---------------------------------------------------------------------------------------------
// core: build information and a thread-pool self-test
// ---------------------------------------------------------------------------------------------
void register_core(py::module_& m) {
  m.attr("__version__") = DELTAIRIS_VERSION;
  m.def("build_info", &deltairis::build_info, "Compiler and flags this extension was built with.");
  m.def("default_num_threads", &deltairis::default_num_threads,
        "Hardware threads available (DELTAIRIS_NUM_THREADS overrides).");
  m.def("resolve_num_threads", &deltairis::resolve_num_threads, py::arg("requested"),
        "Thread count actually used for a request (<= 0 means default).");
  m.def(
      "parallel_sum_squares",
      [](std::int64_t n, int num_threads) {
        if (n < 0) throw py::value_error("n must be >= 0");
        std::vector<std::uint64_t> partial(static_cast<std::size_t>(n));
        {
          py::gil_scoped_release release;
          deltairis::ThreadPool pool(deltairis::resolve_num_threads(num_threads));
          pool.parallel_for(static_cast<std::size_t>(n), [&](std::size_t i) {
            partial[i] = static_cast<std::uint64_t>(i) * static_cast<std::uint64_t>(i);
          });
        }
        std::uint64_t total = 0;
        for (auto v : partial) total += v;
        return total;
      },
      py::arg("n"), py::arg("num_threads") = 0,
      "Sum of i*i for i < n computed on the thread pool (a self-test of the pool).");
}

// ---------------------------------------------------------------------------------------------
// replay: episode store and batched segment sampler (csrc/replay/)
// ---------------------------------------------------------------------------------------------
void register_replay(py::module_& m) {
  (void)m;
  // BEGIN replay bindings
  // END replay bindings
}

// ---------------------------------------------------------------------------------------------
// vecenv: native Crafter engine and the thread-pool vector stepper (csrc/envs/crafter/, csrc/vecenv/)
// ---------------------------------------------------------------------------------------------
void register_vecenv(py::module_& m) {
  (void)m;
  // BEGIN vecenv bindings
  // END vecenv bindings
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "deltairis native core: replay sampler, vector env stepper, native Crafter";
  register_core(m);
  register_replay(m);
  register_vecenv(m);
}
