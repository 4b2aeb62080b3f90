// symbreak neighbour lists: O(N) cell lists for general triclinic cells with per-axis
// periodicity. Plain C++17, no Python in here (the bindings live in bindings.cpp).
//
// Conventions (the same as ASE and vesin):
//   - positions: n_atoms x 3, row-major, Å;
//   - cell: 3 x 3 row-major, lattice vectors as ROWS (h[k] is the k-th lattice vector);
//   - a pair (i, j, S) is reported when |r_ij| < cutoff (strictly less) with
//     r_ij = x_j - x_i + S . h, S an integer vector, S[k] == 0 along non-periodic axes,
//     except an atom with itself (i == j, S == 0); distinct atoms sitting on top of each
//     other are reported with a zero vector, as by ASE and vesin.
//   - positions may lie outside the cell (unwrapped): they are wrapped internally for
//     binning and the wrapping is folded back into S, so r_ij always uses the positions
//     as given.
//   - output is sorted by i, then j, then S (lexicographically): downstream code relies
//     on edges being grouped by centre atom.
//   - half lists hold each pair once: (i, j, S) with i < j, or i == j and S
//     lexicographically positive (its partner (j, i, -S) is left out).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace symbreak {

// Output arrays, allocated with std::malloc so that they can be handed to their final
// owner (a numpy array) without a copy. Call free_neighbor_list() unless ownership has
// been taken (set the pointers to nullptr after taking them).
struct NeighborList {
  std::size_t n_pairs = 0;
  int64_t* i = nullptr;       // [n_pairs]
  int64_t* j = nullptr;       // [n_pairs]
  int32_t* shifts = nullptr;  // [n_pairs][3]
  double* vectors = nullptr;  // [n_pairs][3], Å
};

void free_neighbor_list(NeighborList& list);

struct NeighborOptions {
  double cutoff = 0.0;  // Å, finite, >= 0
  bool full_list = true;
  // at most one thread per 2048 atoms; 0: automatic (one thread below 4096 atoms, else
  // std::thread::hardware_concurrency). The result does not depend on it.
  int n_threads = 1;
  // bins per cutoff length (bin width ~ cutoff / this); 0: automatic. Only changes the
  // speed, never the result: exposed so that tests can cover every stencil shape.
  int bins_per_cutoff = 0;
};

// Computes the neighbour list. Throws std::invalid_argument for bad input (non-finite
// positions or cell, singular cell along a periodic axis, bad cutoff, too many atoms or
// images). Thread safe; any previous content of `out` is freed.
void compute_neighbor_list(const double* positions, std::size_t n_atoms, const double cell[9],
                           const bool pbc[3], const NeighborOptions& options, NeighborList& out);

// For tests: the bins and the stencil that compute_neighbor_list would use.
struct GridInfo {
  int n_bins[3] = {0, 0, 0};      // bins per axis (0: no search needed)
  int reach_bins[3] = {0, 0, 0};  // stencil half-width per axis, in bins
  double bin_edges[9] = {};       // bin edge vectors (rows, Å)
  // kept bin offsets: (d0, d1, lo, hi) stands for (d0, d1, d2) with lo <= d2 <= hi
  std::vector<std::array<int, 4>> rows;
};
GridInfo describe_grid(const double* positions, std::size_t n_atoms, const double cell[9],
                       const bool pbc[3], const NeighborOptions& options);

}  // namespace symbreak
