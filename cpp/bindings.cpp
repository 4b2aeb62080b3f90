// Thin pybind11 layer over the neighbour-list kernel: checks shapes, releases the GIL
// around the computation and hands the malloc'd outputs to numpy without copying.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "neighbors.hpp"

namespace py = pybind11;

namespace {

using DoubleArray = py::array_t<double, py::array::c_style | py::array::forcecast>;

// numpy array owning `data` (freed with std::free when the array dies)
template <typename T>
py::array_t<T> adopt(T* data, py::ssize_t rows, py::ssize_t cols) {
  py::capsule owner(data, [](void* p) { std::free(p); });
  if (cols == 0) {
    return py::array_t<T>({rows}, {static_cast<py::ssize_t>(sizeof(T))}, data, owner);
  }
  return py::array_t<T>(
      {rows, cols},
      {static_cast<py::ssize_t>(cols * sizeof(T)), static_cast<py::ssize_t>(sizeof(T))}, data,
      owner);
}

py::tuple neighbor_list(const DoubleArray& positions, const DoubleArray& cell, py::object pbc,
                        double cutoff, bool full_list, int n_threads, int bins_per_cutoff) {
  if (positions.ndim() != 2 || positions.shape(1) != 3) {
    throw std::invalid_argument("positions must have shape (n_atoms, 3)");
  }
  if (cell.ndim() != 2 || cell.shape(0) != 3 || cell.shape(1) != 3) {
    throw std::invalid_argument("cell must have shape (3, 3)");
  }
  auto flags = pbc.cast<std::vector<bool>>();
  if (flags.size() != 3) {
    throw std::invalid_argument("pbc must hold 3 booleans");
  }
  const bool periodic[3] = {flags[0], flags[1], flags[2]};
  symbreak::NeighborOptions options;
  options.cutoff = cutoff;
  options.full_list = full_list;
  options.n_threads = n_threads;
  options.bins_per_cutoff = bins_per_cutoff;

  symbreak::NeighborList list;
  {
    py::gil_scoped_release release;
    symbreak::compute_neighbor_list(positions.data(), static_cast<std::size_t>(positions.shape(0)),
                                    cell.data(), periodic, options, list);
  }
  const auto n = static_cast<py::ssize_t>(list.n_pairs);
  // adopt one pointer at a time, so that nothing leaks if an allocation throws
  auto take = [](auto*& p) {
    auto* q = p;
    p = nullptr;
    return q;
  };
  try {
    auto i = adopt(take(list.i), n, 0);
    auto j = adopt(take(list.j), n, 0);
    auto shifts = adopt(take(list.shifts), n, 3);
    auto vectors = adopt(take(list.vectors), n, 3);
    return py::make_tuple(i, j, shifts, vectors);
  } catch (...) {
    symbreak::free_neighbor_list(list);
    throw;
  }
}

py::dict grid_info(const DoubleArray& positions, const DoubleArray& cell, py::object pbc,
                   double cutoff, int bins_per_cutoff) {
  if (positions.ndim() != 2 || positions.shape(1) != 3 || cell.ndim() != 2 || cell.shape(0) != 3 ||
      cell.shape(1) != 3) {
    throw std::invalid_argument("positions must be (n_atoms, 3) and cell (3, 3)");
  }
  auto flags = pbc.cast<std::vector<bool>>();
  if (flags.size() != 3) {
    throw std::invalid_argument("pbc must hold 3 booleans");
  }
  const bool periodic[3] = {flags[0], flags[1], flags[2]};
  symbreak::NeighborOptions options;
  options.cutoff = cutoff;
  options.bins_per_cutoff = bins_per_cutoff;
  auto info =
      symbreak::describe_grid(positions.data(), static_cast<std::size_t>(positions.shape(0)),
                              cell.data(), periodic, options);
  py::dict out;
  out["n_bins"] = py::make_tuple(info.n_bins[0], info.n_bins[1], info.n_bins[2]);
  out["reach_bins"] = py::make_tuple(info.reach_bins[0], info.reach_bins[1], info.reach_bins[2]);
  py::array_t<double> edges({3, 3});
  std::copy(info.bin_edges, info.bin_edges + 9, edges.mutable_data());
  out["bin_edges"] = edges;
  py::array_t<int> rows({static_cast<py::ssize_t>(info.rows.size()), py::ssize_t(4)});
  for (std::size_t r = 0; r < info.rows.size(); ++r) {
    std::copy(info.rows[r].begin(), info.rows[r].end(), rows.mutable_data() + 4 * r);
  }
  out["rows"] = rows;
  return out;
}

}  // namespace

PYBIND11_MODULE(_neighbors, m) {
  m.doc() = "C++ cell-list neighbour search (see symbreak.neighbors for the Python API)";
  m.def("neighbor_list", &neighbor_list, py::arg("positions"), py::arg("cell"), py::arg("pbc"),
        py::arg("cutoff"), py::arg("full_list") = true, py::arg("n_threads") = 1,
        py::arg("bins_per_cutoff") = 0,
        "Low-level entry point: positions (N, 3) and cell (3, 3) float64 C-contiguous, "
        "pbc three booleans, cutoff in Å. Returns (i, j, shifts, vectors), sorted by i "
        "then j then shift. bins_per_cutoff (0: automatic) only tunes the speed. Raises "
        "ValueError on bad input.");
  m.def("grid_info", &grid_info, py::arg("positions"), py::arg("cell"), py::arg("pbc"),
        py::arg("cutoff"), py::arg("bins_per_cutoff") = 0,
        "For tests: bins per axis, stencil half-widths, bin edge vectors and the kept "
        "stencil rows (d0, d1, lo, hi) that neighbor_list would use.");
}
