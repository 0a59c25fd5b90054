// The one buffer check of the deltairis._core bindings: every caller-owned NumPy array is converted to a
// typed pointer here, after its dtype, shape, contiguity and writability were checked. Errors are
// ValueErrors that name the field, e.g. "rew has dtype float64, expected f32".
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstddef>
#include <string>
#include <type_traits>
#include <vector>

namespace deltairis {
namespace bindings {

namespace py = pybind11;

// A size in an expected shape that is not checked.
constexpr py::ssize_t kAnySize = -1;

// a.shape(axis) when `a` has `ndim` dimensions, else kAnySize (the check then reports the dimensions).
inline py::ssize_t size_if(const py::array& a, py::ssize_t ndim, py::ssize_t axis) {
  return a.ndim() == ndim ? a.shape(axis) : kAnySize;
}

// NumPy's dtype kind of T: 'b' bool, 'u' unsigned, 'i' signed, 'f' floating point.
template <typename T>
constexpr char dtype_kind() {
  if (std::is_same<T, bool>::value) return 'b';
  if (std::is_floating_point<T>::value) return 'f';
  return std::is_unsigned<T>::value ? 'u' : 'i';
}

// Checks that `a` holds T (kind and item size), has shape.size() dimensions with every known size of
// `shape`, is C-contiguous and (when `writable`) writable; returns its data as T*.
template <typename T>
T* checked_buffer(const py::array& a, const char* name, const std::vector<py::ssize_t>& shape, bool writable) {
  const std::string field(name);
  constexpr char kind = dtype_kind<T>();
  if (a.dtype().kind() != kind || a.dtype().itemsize() != static_cast<py::ssize_t>(sizeof(T))) {
    throw py::value_error(field + " has dtype " + std::string(py::str(a.dtype())) + ", expected " + kind +
                          std::to_string(8 * sizeof(T)));
  }
  if (a.ndim() != static_cast<py::ssize_t>(shape.size())) {
    throw py::value_error(field + " must have " + std::to_string(shape.size()) + " dimensions, got " +
                          std::to_string(a.ndim()));
  }
  for (std::size_t i = 0; i < shape.size(); ++i) {
    const py::ssize_t got = a.shape(static_cast<py::ssize_t>(i));
    if (shape[i] != kAnySize && got != shape[i]) {
      throw py::value_error(field + " has size " + std::to_string(got) + " in dimension " + std::to_string(i) +
                            ", expected " + std::to_string(shape[i]));
    }
  }
  if (!(a.flags() & py::array::c_style)) throw py::value_error(field + " must be C-contiguous");
  if (writable && !a.writeable()) throw py::value_error(field + " must be writable");
  return static_cast<T*>(const_cast<void*>(a.data()));
}

// A read-only input buffer.
template <typename T>
const T* input(const py::array& a, const char* name, const std::vector<py::ssize_t>& shape) {
  return checked_buffer<T>(a, name, shape, false);
}

// A caller-owned output buffer (must be writable).
template <typename T>
T* output(const py::array& a, const char* name, const std::vector<py::ssize_t>& shape) {
  return checked_buffer<T>(a, name, shape, true);
}

// A fresh C-contiguous uint8 array (an observation the binding returns).
using U8Array = py::array_t<std::uint8_t, py::array::c_style>;

// Registration functions, one per component (csrc/bindings/<component>.cc).
void register_core(py::module_& m);
void register_replay(py::module_& m);
void register_crafter(py::module_& m);

}  // namespace bindings
}  // namespace deltairis
