// deltairis._core: the pybind11 module. Each component registers its bindings from a translation unit
// of its own (csrc/bindings/<component>.cc); the components themselves (csrc/*/) contain no Python
// headers. Rules for every binding: check buffers with buffers.h (ValueError naming the field), release
// the GIL around blocking calls, and delegate to the C++ code.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "bindings/buffers.h"
#include "core/info.h"

#ifndef DELTAIRIS_VERSION
#define DELTAIRIS_VERSION "0.0.0"
#endif

namespace deltairis {
namespace bindings {

void register_core(py::module_& m) {
  m.attr("__version__") = DELTAIRIS_VERSION;
  m.def("build_info", &build_info, "Compiler and flags this extension was built with.");
  m.def("default_num_threads", &default_num_threads, "Hardware threads available (DELTAIRIS_NUM_THREADS overrides).");
  m.def("resolve_num_threads", &resolve_num_threads, py::arg("requested"),
        "Thread count actually used for a request (<= 0 means default).");
}

}  // namespace bindings
}  // namespace deltairis

PYBIND11_MODULE(_core, m) {
  m.doc() = "deltairis native core: replay sampler, vector env stepper, native Crafter";
  deltairis::bindings::register_core(m);
  deltairis::bindings::register_replay(m);
  deltairis::bindings::register_crafter(m);
}
