// Cell-list neighbour search. Outline:
//
//  1. Binning basis B: lattice vectors on periodic axes, an orthonormal completion on the
//     others (so a non-periodic axis bins over the atoms' bounding box, never over the
//     cell, and the cell may be zero there). Fractional coordinates f = x B^-1 are wrapped
//     into [0, 1) on periodic axes; the integer part is kept per atom and folded back
//     into the output shifts, so vectors refer to the positions as given.
//  2. Bins are parallelepipeds of perpendicular width >= cutoff / sub; their number is
//     capped at O(N), so a few atoms in a huge (periodic or not) box cost O(N), not
//     O(volume). Atoms are counting-sorted by bin into contiguous arrays.
//  3. Stencil: offsets (d0, d1, d2) in bins whose parallelepipeds can hold points closer
//     than the cutoff, found with a rigorous lower bound on their distance (exact for the
//     nearest-point direction). Along axis 2 the kept offsets of a row form one
//     contiguous range of bins, i.e. one contiguous range of atoms per image, so the
//     inner loop is a long branch-free scan over contiguous memory.
//  4. Phase 1 (per bin, threads over bins): each centre atom scans its segments and keeps
//     the 64-bit key (j << bits | image code) of every neighbour; the image code is
//     lexicographic in the shift, so one integer sort orders the atom's pairs by (j, S).
//     Keys are 8 bytes per pair, much less than the 52-byte output rows.
//  5. Phase 2 (threads over i): pair counts give exact output offsets, the outputs are
//     allocated once and filled in i order from the keys, recomputing the vector with the
//     same floating-point operations as the distance test (so the cutoff decision and the
//     reported vector agree bit for bit).
#include "neighbors.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace symbreak {

void free_neighbor_list(NeighborList& list) {
  std::free(list.i);
  std::free(list.j);
  std::free(list.shifts);
  std::free(list.vectors);
  list = NeighborList{};
}

namespace {

// malloc-backed growable array of trivially copyable T, never zero-initialised (outputs
// reach hundreds of MB), whose storage can be handed to numpy (released, freed with
// std::free). Big blocks are 2 MiB aligned and marked for transparent huge pages.
template <typename T>
class RawBuffer {
 public:
  RawBuffer() = default;
  explicit RawBuffer(std::size_t n) { resize(n); }
  RawBuffer(const RawBuffer&) = delete;
  RawBuffer& operator=(const RawBuffer&) = delete;
  RawBuffer(RawBuffer&& other) noexcept { swap(other); }
  RawBuffer& operator=(RawBuffer&& other) noexcept {
    swap(other);
    return *this;
  }
  ~RawBuffer() { std::free(data_); }

  T* data() { return data_; }
  const T* data() const { return data_; }
  T& operator[](std::size_t k) { return data_[k]; }
  const T& operator[](std::size_t k) const { return data_[k]; }
  std::size_t size() const { return size_; }

  void reserve(std::size_t n) {
    if (n > capacity_) {
      grow(std::max(n, capacity_ + capacity_ / 2 + 64));
    }
  }
  void resize(std::size_t n) {
    if (n > capacity_) {
      grow(n);
    }
    size_ = n;
  }
  // hands the allocation (at least one element, so never null) to the caller
  T* release() {
    if (data_ == nullptr) {
      grow(1);
    }
    T* out = data_;
    data_ = nullptr;
    size_ = capacity_ = 0;
    return out;
  }

 private:
  void grow(std::size_t n) {
    if (n > std::numeric_limits<std::size_t>::max() / sizeof(T)) {
      throw std::bad_alloc();
    }
    const std::size_t bytes = n * sizeof(T);
    void* p = nullptr;
    if (bytes >= kHugeThreshold) {
      // Big outputs are written once, right after allocation: with 4 KiB pages the
      // page faults cost more than computing the pairs. Ask for transparent huge
      // pages (2 MiB aligned, so that the kernel can use them).
      if (posix_memalign(&p, kHugeAlign, bytes) != 0) {
        throw std::bad_alloc();
      }
#if defined(__linux__) && defined(MADV_HUGEPAGE)
      madvise(p, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
#endif
      if (size_ > 0) {
        std::memcpy(p, data_, size_ * sizeof(T));
      }
      std::free(data_);
    } else {
      p = std::realloc(data_, bytes);
      if (p == nullptr) {
        throw std::bad_alloc();
      }
    }
    data_ = static_cast<T*>(p);
    capacity_ = n;
  }
  static constexpr std::size_t kHugeThreshold = std::size_t(4) << 20;
  static constexpr std::size_t kHugeAlign = std::size_t(2) << 20;
  void swap(RawBuffer& other) noexcept {
    std::swap(data_, other.data_);
    std::swap(size_, other.size_);
    std::swap(capacity_, other.capacity_);
  }

  T* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

using Vec3 = std::array<double, 3>;

double dot(const Vec3& a, const Vec3& b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }
Vec3 cross(const Vec3& a, const Vec3& b) {
  return {a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
}
double norm(const Vec3& a) { return std::sqrt(dot(a, a)); }

// floor(a / b) for b > 0
int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

struct Basis {
  Vec3 rows[3];       // B: cell rows on periodic axes, orthonormal completion elsewhere
  Vec3 inv[3];        // B^-1 (f = x B^-1)
  double spacing[3];  // distance between the lattice planes f_k = 0 and f_k = 1
};

Basis make_basis(const double cell[9], const bool pbc[3]) {
  for (int k = 0; k < 9; ++k) {
    if (!std::isfinite(cell[k])) {
      throw std::invalid_argument("cell contains non-finite values (NaN or inf)");
    }
  }
  Vec3 h[3];
  for (int k = 0; k < 3; ++k) {
    h[k] = {cell[3 * k], cell[3 * k + 1], cell[3 * k + 2]};
  }
  int per[3], non[3], n_per = 0, n_non = 0;
  for (int k = 0; k < 3; ++k) {
    if (pbc[k]) {
      per[n_per++] = k;
      if (norm(h[k]) == 0.0) {
        throw std::invalid_argument("cell vector " + std::to_string(k) +
                                    " is zero but the system is periodic along it");
      }
    } else {
      non[n_non++] = k;
    }
  }
  // Relative tolerance on the (normalised) volume spanned by the periodic vectors: below
  // it the cell is singular for all practical purposes (and the number of periodic
  // images within any cutoff explodes).
  const double tol = 1e-10;
  Basis b;
  if (n_per == 3) {
    double vol = std::fabs(dot(h[0], cross(h[1], h[2])));
    if (!(vol > tol * norm(h[0]) * norm(h[1]) * norm(h[2]))) {
      throw std::invalid_argument(
          "cell is singular (its lattice vectors are linearly "
          "dependent) but the system is periodic");
    }
    for (int k = 0; k < 3; ++k) b.rows[k] = h[k];
  } else if (n_per == 2) {
    const Vec3& a = h[per[0]];
    const Vec3& c = h[per[1]];
    Vec3 n = cross(a, c);
    double nn = norm(n);
    if (!(nn > tol * norm(a) * norm(c))) {
      throw std::invalid_argument("cell vectors " + std::to_string(per[0]) + " and " +
                                  std::to_string(per[1]) +
                                  " are parallel but the system is periodic along both");
    }
    b.rows[per[0]] = a;
    b.rows[per[1]] = c;
    b.rows[non[0]] = {n[0] / nn, n[1] / nn, n[2] / nn};
  } else if (n_per == 1) {
    const Vec3& a = h[per[0]];
    double na = norm(a);
    Vec3 ah = {a[0] / na, a[1] / na, a[2] / na};
    // the Cartesian axis least aligned with a, orthogonalised against it
    int e = 0;
    for (int k = 1; k < 3; ++k) {
      if (std::fabs(ah[k]) < std::fabs(ah[e])) e = k;
    }
    Vec3 u = {0.0, 0.0, 0.0};
    u[e] = 1.0;
    double p = dot(u, ah);
    for (int k = 0; k < 3; ++k) u[k] -= p * ah[k];
    double nu = norm(u);
    for (int k = 0; k < 3; ++k) u[k] /= nu;
    b.rows[per[0]] = a;
    b.rows[non[0]] = u;
    b.rows[non[1]] = cross(ah, u);
  } else {
    b.rows[0] = {1.0, 0.0, 0.0};
    b.rows[1] = {0.0, 1.0, 0.0};
    b.rows[2] = {0.0, 0.0, 1.0};
  }
  // inverse through the adjugate: B^-1 columns are (B1 x B2, B2 x B0, B0 x B1) / det
  Vec3 c0 = cross(b.rows[1], b.rows[2]);
  Vec3 c1 = cross(b.rows[2], b.rows[0]);
  Vec3 c2 = cross(b.rows[0], b.rows[1]);
  double det = dot(b.rows[0], c0);
  for (int r = 0; r < 3; ++r) {
    b.inv[r] = {c0[r] / det, c1[r] / det, c2[r] / det};
  }
  Vec3 cols[3] = {c0, c1, c2};
  for (int k = 0; k < 3; ++k) {
    b.spacing[k] = std::fabs(det) / norm(cols[k]);
  }
  return b;
}

// One row of the stencil: offsets (d0, d1, lo..hi) along the three bin axes.
struct StencilRow {
  int d0, d1, lo, hi;
};

// Can a point of bin b and a point of bin b + d be closer than `reach`? `edge[k]` are
// the bin edge vectors (Cartesian). Returns false only when a rigorous lower bound on
// the distance between the two parallelepipeds is >= reach.
//
// The difference of two such points ranges over the zonotope Z = {sum_k y_k edge_k :
// y_k in [d_k - 1, d_k + 1]}. For any unit vector n, min_{p in Z} n.p = n.c -
// sum_k |n.edge_k| (c = sum_k d_k edge_k) bounds the distance from below, and equals it
// when n points to the nearest point of Z. Candidate nearest points come from the
// stationarity conditions on each face of the box of y (27 active sets); a badly
// conditioned solve only gives a weaker, never a wrong, bound.
bool bins_may_interact(const int d[3], const Vec3 edge[3], double reach) {
  // a feasible point closer than reach: certainly interacting
  Vec3 p = {0.0, 0.0, 0.0};
  for (int k = 0; k < 3; ++k) {
    double y = std::min(std::max(0.0, d[k] - 1.0), d[k] + 1.0);
    for (int a = 0; a < 3; ++a) p[a] += y * edge[k][a];
  }
  if (dot(p, p) < reach * reach) {
    return true;
  }
  Vec3 c = {0.0, 0.0, 0.0};
  for (int k = 0; k < 3; ++k) {
    for (int a = 0; a < 3; ++a) c[a] += d[k] * edge[k][a];
  }
  auto bound = [&](Vec3 n) {
    double nn = norm(n);
    if (!(nn > 0.0) || !std::isfinite(nn)) return -1.0;
    for (int a = 0; a < 3; ++a) n[a] /= nn;
    return dot(n, c) - std::fabs(dot(n, edge[0])) - std::fabs(dot(n, edge[1])) -
           std::fabs(dot(n, edge[2]));
  };
  double g[3][3];
  for (int r = 0; r < 3; ++r) {
    for (int s = 0; s < 3; ++s) g[r][s] = dot(edge[r], edge[s]);
  }
  // states: 0 = at lower bound, 1 = at upper bound, 2 = free
  for (int code = 0; code < 27; ++code) {
    int state[3] = {code % 3, (code / 3) % 3, code / 9};
    double y[3];
    int freev[3], nf = 0;
    for (int k = 0; k < 3; ++k) {
      if (state[k] == 2) {
        freev[nf++] = k;
        y[k] = 0.0;
      } else {
        y[k] = d[k] + (state[k] == 0 ? -1.0 : 1.0);
      }
    }
    if (nf > 0) {
      // G_FF y_F = -G_FC y_C
      double a[3][3], rhs[3];
      for (int r = 0; r < nf; ++r) {
        rhs[r] = 0.0;
        for (int k = 0; k < 3; ++k) {
          if (state[k] != 2) rhs[r] -= g[freev[r]][k] * y[k];
        }
        for (int s = 0; s < nf; ++s) a[r][s] = g[freev[r]][freev[s]];
      }
      double sol[3];
      if (nf == 1) {
        if (!(a[0][0] > 0.0)) continue;
        sol[0] = rhs[0] / a[0][0];
      } else if (nf == 2) {
        double det = a[0][0] * a[1][1] - a[0][1] * a[1][0];
        if (!(std::fabs(det) > 0.0)) continue;
        sol[0] = (rhs[0] * a[1][1] - a[0][1] * rhs[1]) / det;
        sol[1] = (a[0][0] * rhs[1] - a[1][0] * rhs[0]) / det;
      } else {
        Vec3 r0 = {a[0][0], a[0][1], a[0][2]}, r1 = {a[1][0], a[1][1], a[1][2]},
             r2 = {a[2][0], a[2][1], a[2][2]};
        double det = dot(r0, cross(r1, r2));
        if (!(std::fabs(det) > 0.0)) continue;
        Vec3 rr = {rhs[0], rhs[1], rhs[2]};
        // Cramer's rule (a is symmetric, so rows and columns are interchangeable)
        sol[0] = dot(rr, cross(r1, r2)) / det;
        sol[1] = dot(r0, cross(rr, r2)) / det;
        sol[2] = dot(r0, cross(r1, rr)) / det;
      }
      for (int r = 0; r < nf; ++r) {
        int k = freev[r];
        y[k] = std::min(std::max(sol[r], d[k] - 1.0), d[k] + 1.0);
      }
    }
    Vec3 q = {0.0, 0.0, 0.0};
    for (int k = 0; k < 3; ++k) {
      for (int a = 0; a < 3; ++a) q[a] += y[k] * edge[k][a];
    }
    if (dot(q, q) < reach * reach) {
      return true;
    }
    if (bound(q) >= reach) {
      return false;
    }
  }
  return true;
}

struct Grid {
  int n[3];  // bins per axis
  int m[3];  // stencil reach per axis, in bins
  bool periodic[3];
  int shift_bits;  // bits per axis of the image code
  int kmax;        // |image shift| <= kmax along each axis
};

// Image code: lexicographic in the shift (s0, s1, s2), |s_k| <= kmax.
inline uint64_t encode_shift(const Grid& g, int64_t s0, int64_t s1, int64_t s2) {
  const int b = g.shift_bits;
  return (static_cast<uint64_t>(s0 + g.kmax) << (2 * b)) |
         (static_cast<uint64_t>(s1 + g.kmax) << b) | static_cast<uint64_t>(s2 + g.kmax);
}

// Cartesian image vector s . B. Used by both phases so that phase 2 reproduces the
// vectors of phase 1 bit for bit.
inline Vec3 shift_vector(const Basis& basis, int64_t s0, int64_t s1, int64_t s2) {
  const double a = static_cast<double>(s0), b = static_cast<double>(s1),
               c = static_cast<double>(s2);
  return {a * basis.rows[0][0] + b * basis.rows[1][0] + c * basis.rows[2][0],
          a * basis.rows[0][1] + b * basis.rows[1][1] + c * basis.rows[2][1],
          a * basis.rows[0][2] + b * basis.rows[1][2] + c * basis.rows[2][2]};
}

// Sorts the keys of one centre atom (a few tens to a few hundred, spread over [0, N)).
// std::sort costs ~10 ns per key here, more than finding the pair; a bucket pass on the
// high bits followed by insertion sorts of the (mostly tiny) buckets costs a few ns.
// Buckets that receive many keys (clustered indices) fall back to std::sort.
void sort_keys(uint64_t* keys, std::size_t n, std::vector<uint64_t>& tmp,
               std::vector<uint32_t>& counts) {
  auto insertion_sort = [](uint64_t* a, std::size_t len) {
    for (std::size_t q = 1; q < len; ++q) {
      const uint64_t v = a[q];
      std::size_t p = q;
      while (p > 0 && a[p - 1] > v) {
        a[p] = a[p - 1];
        --p;
      }
      a[p] = v;
    }
  };
  if (n <= 24) {
    insertion_sort(keys, n);
    return;
  }
  uint64_t lo = keys[0], hi = keys[0];
  for (std::size_t q = 1; q < n; ++q) {
    lo = std::min(lo, keys[q]);
    hi = std::max(hi, keys[q]);
  }
  // about one bucket per key: bucket = (key - lo) >> shift
  int bucket_bits = 1;
  while ((std::size_t(1) << bucket_bits) < n) ++bucket_bits;
  const uint64_t range = hi - lo;
  int shift = 0;
  while ((range >> shift) >= (uint64_t(1) << bucket_bits)) ++shift;
  const std::size_t n_buckets = static_cast<std::size_t>(range >> shift) + 1;
  if (counts.size() < n_buckets + 1) counts.resize(n_buckets + 1);
  if (tmp.size() < n) tmp.resize(n);
  std::fill(counts.begin(), counts.begin() + n_buckets + 1, 0u);
  for (std::size_t q = 0; q < n; ++q) ++counts[((keys[q] - lo) >> shift) + 1];
  for (std::size_t b = 0; b < n_buckets; ++b) counts[b + 1] += counts[b];
  for (std::size_t q = 0; q < n; ++q) tmp[counts[(keys[q] - lo) >> shift]++] = keys[q];
  // counts[b] is now the end of bucket b
  std::size_t begin = 0;
  for (std::size_t b = 0; b < n_buckets; ++b) {
    const std::size_t end = counts[b];
    const std::size_t len = end - begin;
    if (len > 32) {
      std::sort(tmp.data() + begin, tmp.data() + end);
    } else if (len > 1) {
      insertion_sort(tmp.data() + begin, len);
    }
    begin = end;
  }
  std::memcpy(keys, tmp.data(), n * sizeof(uint64_t));
}

// A run of candidate atoms [begin, end) in bin order, all seen through the same image.
struct Segment {
  int64_t begin, end;
  double sx, sy, sz;
  uint64_t code;
};

struct Workspace {
  // atoms sorted by bin
  RawBuffer<double> px, py, pz;  // wrapped Cartesian positions
  RawBuffer<uint64_t> key_base;  // original index << (3 * shift_bits)
  RawBuffer<int32_t> atom;       // original index
  RawBuffer<int64_t> bin_start;  // [n_bins + 1]
  // per original atom
  RawBuffer<double> wrapped;      // [N][3]
  RawBuffer<int32_t> offset;      // [N][3] wrapping: x = wrapped + offset . B
  RawBuffer<int64_t> key_offset;  // where the atom's keys start in its thread's buffer
  RawBuffer<int64_t> key_count;
  RawBuffer<uint8_t> key_thread;
};

template <bool FULL>
void find_pairs(const Basis& basis, const Grid& grid, const std::vector<StencilRow>& rows,
                const Workspace& ws, double cutoff2, int64_t bin_begin, int64_t bin_end,
                uint8_t thread, RawBuffer<uint64_t>& keys, int64_t* key_offset, int64_t* key_count,
                uint8_t* key_thread) {
  const int n0 = grid.n[0], n1 = grid.n[1], n2 = grid.n[2];
  const uint64_t self_code = encode_shift(grid, 0, 0, 0);
  const double* px = ws.px.data();
  const double* py = ws.py.data();
  const double* pz = ws.pz.data();
  const uint64_t* key_base = ws.key_base.data();
  const int64_t* start = ws.bin_start.data();

  std::vector<Segment> segments;
  std::vector<uint64_t> sort_tmp;
  std::vector<uint32_t> sort_counts;
  std::size_t used = keys.size();
  for (int64_t bin = bin_begin; bin < bin_end; ++bin) {
    if (start[bin] == start[bin + 1]) continue;
    const int64_t b2 = bin % n2, b1 = (bin / n2) % n1, b0 = bin / (int64_t(n1) * n2);
    // the segments are shared by all atoms of this bin
    segments.clear();
    int64_t n_candidates = 0;
    for (const StencilRow& row : rows) {
      int64_t c0 = b0 + row.d0, s0 = 0;
      if (grid.periodic[0]) {
        s0 = floor_div(c0, n0);
        c0 -= s0 * n0;
      } else if (c0 < 0 || c0 >= n0) {
        continue;
      }
      int64_t c1 = b1 + row.d1, s1 = 0;
      if (grid.periodic[1]) {
        s1 = floor_div(c1, n1);
        c1 -= s1 * n1;
      } else if (c1 < 0 || c1 >= n1) {
        continue;
      }
      const int64_t base = (c0 * n1 + c1) * n2;
      int64_t lo = b2 + row.lo, hi = b2 + row.hi;
      if (!grid.periodic[2]) {
        lo = std::max<int64_t>(lo, 0);
        hi = std::min<int64_t>(hi, n2 - 1);
      }
      // split [lo, hi] into runs of bins seen through one image along axis 2
      for (int64_t c = lo; c <= hi;) {
        const int64_t s2 = grid.periodic[2] ? floor_div(c, n2) : 0;
        const int64_t run_end = std::min(hi, (s2 + 1) * n2 - 1);
        const int64_t w = c - s2 * n2;
        const int64_t begin = start[base + w];
        const int64_t end = start[base + w + (run_end - c) + 1];
        if (end > begin) {
          Vec3 sv = shift_vector(basis, s0, s1, s2);
          segments.push_back({begin, end, sv[0], sv[1], sv[2], encode_shift(grid, s0, s1, s2)});
          n_candidates += end - begin;
        }
        c = run_end + 1;
      }
    }

    for (int64_t k = start[bin]; k < start[bin + 1]; ++k) {
      const double xi = px[k], yi = py[k], zi = pz[k];
      const int64_t i = ws.atom[k];
      const uint64_t self_key = key_base[k] | self_code;
      keys.reserve(used + static_cast<std::size_t>(n_candidates));
      uint64_t* out = keys.data() + used;
      std::size_t n = 0;
      for (const Segment& seg : segments) {
        const uint64_t code = seg.code;
        for (int64_t q = seg.begin; q < seg.end; ++q) {
          // same operation order as phase 2: (x_j + s) - x_i
          const double dx = (px[q] + seg.sx) - xi;
          const double dy = (py[q] + seg.sy) - yi;
          const double dz = (pz[q] + seg.sz) - zi;
          const double d2 = dx * dx + dy * dy + dz * dz;
          const uint64_t key = key_base[q] | code;
          // branch-free compaction: always store, advance when accepted
          out[n] = key;
          if constexpr (FULL) {
            n += static_cast<std::size_t>((d2 < cutoff2) & (key != self_key));
          } else {
            n += static_cast<std::size_t>((d2 < cutoff2) & (key > self_key));
          }
        }
      }
      sort_keys(out, n, sort_tmp, sort_counts);
      key_offset[i] = static_cast<int64_t>(used);
      key_count[i] = static_cast<int64_t>(n);
      key_thread[i] = thread;
      used += n;
      keys.resize(used);
    }
  }
}

// Image shifts (integer and Cartesian) by image code, when there are few codes (the
// usual case: cutoff below the box), so that phase 2 looks them up instead of decoding.
struct ShiftTable {
  std::vector<std::array<int32_t, 3>> s;
  std::vector<Vec3> v;
};

ShiftTable make_shift_table(const Basis& basis, const Grid& grid) {
  ShiftTable table;
  const int b = grid.shift_bits;
  if (3 * b > 12) return table;
  const std::size_t n_codes = std::size_t(1) << (3 * b);
  const uint64_t field = (uint64_t(1) << b) - 1;
  table.s.resize(n_codes);
  table.v.resize(n_codes);
  for (uint64_t code = 0; code < n_codes; ++code) {
    const int64_t s0 = static_cast<int64_t>(code >> (2 * b)) - grid.kmax;
    const int64_t s1 = static_cast<int64_t>((code >> b) & field) - grid.kmax;
    const int64_t s2 = static_cast<int64_t>(code & field) - grid.kmax;
    table.s[code] = {static_cast<int32_t>(s0), static_cast<int32_t>(s1), static_cast<int32_t>(s2)};
    table.v[code] = shift_vector(basis, s0, s1, s2);
  }
  return table;
}

void write_pairs(const Basis& basis, const Grid& grid, const ShiftTable& table, const Workspace& ws,
                 const std::vector<RawBuffer<uint64_t>>& keys, const int64_t* pair_start,
                 int64_t i_begin, int64_t i_end, NeighborList& out) {
  const int key_shift = 3 * grid.shift_bits;
  const uint64_t code_mask = (uint64_t(1) << key_shift) - 1;
  const uint64_t field_mask = (uint64_t(1) << grid.shift_bits) - 1;
  const int b = grid.shift_bits;
  const bool use_table = !table.s.empty();
  const double* __restrict wp = ws.wrapped.data();
  const int32_t* __restrict off = ws.offset.data();
  int64_t* __restrict out_i = out.i;
  int64_t* __restrict out_j = out.j;
  int32_t* __restrict out_s = out.shifts;
  double* __restrict out_v = out.vectors;
  for (int64_t i = i_begin; i < i_end; ++i) {
    const uint64_t* __restrict key = keys[ws.key_thread[i]].data() + ws.key_offset[i];
    const int64_t n = ws.key_count[i];
    const int64_t p0 = pair_start[i];
    std::fill(out_i + p0, out_i + p0 + n, i);
    const double xi = wp[3 * i], yi = wp[3 * i + 1], zi = wp[3 * i + 2];
    const int32_t oi0 = off[3 * i], oi1 = off[3 * i + 1], oi2 = off[3 * i + 2];
    for (int64_t q = 0; q < n; ++q) {
      const int64_t p = p0 + q;
      const uint64_t k = key[q];
      const int64_t j = static_cast<int64_t>(k >> key_shift);
      const uint64_t code = k & code_mask;
      int32_t s0, s1, s2;
      Vec3 sv;
      if (use_table) {
        s0 = table.s[code][0];
        s1 = table.s[code][1];
        s2 = table.s[code][2];
        sv = table.v[code];
      } else {
        s0 = static_cast<int32_t>(static_cast<int64_t>(code >> (2 * b)) - grid.kmax);
        s1 = static_cast<int32_t>(static_cast<int64_t>((code >> b) & field_mask) - grid.kmax);
        s2 = static_cast<int32_t>(static_cast<int64_t>(code & field_mask) - grid.kmax);
        sv = shift_vector(basis, s0, s1, s2);
      }
      out_j[p] = j;
      out_s[3 * p] = s0 + oi0 - off[3 * j];
      out_s[3 * p + 1] = s1 + oi1 - off[3 * j + 1];
      out_s[3 * p + 2] = s2 + oi2 - off[3 * j + 2];
      // same operations as the distance test of phase 1: (x_j + s) - x_i
      out_v[3 * p] = (wp[3 * j] + sv[0]) - xi;
      out_v[3 * p + 1] = (wp[3 * j + 1] + sv[1]) - yi;
      out_v[3 * p + 2] = (wp[3 * j + 2] + sv[2]) - zi;
    }
  }
}

// Runs f(t) for t in [0, n_threads), on the calling thread too.
template <typename F>
void run_threads(int n_threads, F&& f) {
  if (n_threads <= 1) {
    f(0);
    return;
  }
  std::vector<std::thread> pool;
  std::vector<std::exception_ptr> errors(n_threads);
  for (int t = 1; t < n_threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        f(t);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  try {
    f(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (auto& th : pool) th.join();
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
}

// Everything about the geometry that the search needs, before touching pairs.
struct Plan {
  Basis basis;
  Grid grid;
  Vec3 edge[3];                  // bin edge vectors (Cartesian)
  std::vector<StencilRow> rows;  // bin offsets that may hold pairs
  double extent[3];              // binned range along each axis, fractional units
  double fmin[3];                // lower end of the binned range (non-periodic axes)
  double reach;                  // cutoff plus a rounding margin
  double per_cutoff_cube;        // atoms per cutoff^3: expected pair density
};

// Validates the input, wraps the atoms (filling ws.wrapped, ws.offset and frac) and
// chooses bins and stencil. plan.grid is left empty when no pair can exist.
Plan make_plan(const double* positions, std::size_t n_atoms, const double cell[9],
               const bool pbc[3], const NeighborOptions& options, Workspace& ws,
               RawBuffer<double>& frac) {
  const double cutoff = options.cutoff;
  if (!std::isfinite(cutoff)) {
    throw std::invalid_argument("cutoff must be finite, got " + std::to_string(cutoff));
  }
  if (cutoff < 0.0) {
    throw std::invalid_argument("cutoff must be >= 0, got " + std::to_string(cutoff));
  }
  if (n_atoms > static_cast<std::size_t>(std::numeric_limits<int32_t>::max())) {
    throw std::invalid_argument("too many atoms (at most 2^31 - 1)");
  }
  Plan plan;
  plan.basis = make_basis(cell, pbc);
  const Basis& basis = plan.basis;
  const int64_t N = static_cast<int64_t>(n_atoms);

  ws.wrapped.resize(3 * n_atoms);
  ws.offset.resize(3 * n_atoms);
  frac.resize(3 * n_atoms);
  // fractional coordinates: wrapped into [0, 1) on periodic axes
  double fmax[3] = {0.0, 0.0, 0.0}, fabs_max = 0.0;
  double* fmin = plan.fmin;
  for (int k = 0; k < 3; ++k) fmin[k] = 0.0;
  for (int64_t i = 0; i < N; ++i) {
    const double* x = positions + 3 * i;
    if (!(std::isfinite(x[0]) && std::isfinite(x[1]) && std::isfinite(x[2]))) {
      throw std::invalid_argument("position of atom " + std::to_string(i) +
                                  " is not finite (NaN or inf)");
    }
    double f[3];
    int32_t o[3] = {0, 0, 0};
    for (int k = 0; k < 3; ++k) {
      f[k] = x[0] * basis.inv[0][k] + x[1] * basis.inv[1][k] + x[2] * basis.inv[2][k];
      fabs_max = std::max(fabs_max, std::fabs(f[k]));
      if (pbc[k]) {
        double fl = std::floor(f[k]);
        if (!(std::fabs(fl) < 1e8)) {
          throw std::invalid_argument("atom " + std::to_string(i) +
                                      " lies more than 1e8 cells away from the cell along axis " +
                                      std::to_string(k));
        }
        f[k] -= fl;
        o[k] = static_cast<int32_t>(fl);
        if (f[k] >= 1.0) {  // f slightly below an integer rounds up to it
          f[k] -= 1.0;
          o[k] += 1;
        }
      }
    }
    double* w = ws.wrapped.data() + 3 * i;
    for (int a = 0; a < 3; ++a) {
      w[a] = x[a] - (o[0] * basis.rows[0][a] + o[1] * basis.rows[1][a] + o[2] * basis.rows[2][a]);
    }
    for (int k = 0; k < 3; ++k) {
      ws.offset[3 * i + k] = o[k];
      frac[3 * i + k] = f[k];
      if (i == 0 || f[k] < fmin[k]) fmin[k] = f[k];
      if (i == 0 || f[k] > fmax[k]) fmax[k] = f[k];
    }
  }
  for (int k = 0; k < 3; ++k) plan.grid.n[k] = 0;
  if (N == 0 || cutoff == 0.0) {
    return plan;
  }

  // Margin for rounding: binning uses f, distances use the wrapped Cartesian positions;
  // the two agree to a few ulps of the coordinates, so make the stencil reach a bit
  // further than the cutoff.
  double row_norm = 0.0;
  for (int k = 0; k < 3; ++k) row_norm = std::max(row_norm, norm(basis.rows[k]));
  plan.reach = cutoff * (1.0 + 1e-10) + 1e-13 * row_norm * (1.0 + fabs_max);

  const double reach = plan.reach;
  // Extent of the binned region along each axis, in fractional units.
  double* extent = plan.extent;
  for (int k = 0; k < 3; ++k) extent[k] = pbc[k] ? 1.0 : fmax[k] - fmin[k];

  // Bins per axis: perpendicular width >= reach / sub. Finer bins shrink the searched
  // volume (27 rc^3 for sub = 1 down to ~15 rc^3 for sub = 2) but add per-bin overhead,
  // which only pays when bins still hold a few atoms.
  double volume = std::fabs(dot(basis.rows[0], cross(basis.rows[1], basis.rows[2])));
  for (int k = 0; k < 3; ++k) {
    if (!pbc[k]) volume *= std::max(extent[k] * basis.spacing[k], cutoff);
  }
  plan.per_cutoff_cube = static_cast<double>(N) / volume * cutoff * cutoff * cutoff;
  const double per_cutoff_cube = plan.per_cutoff_cube;
  int sub = per_cutoff_cube > 16.0 ? 2 : 1;
  if (per_cutoff_cube > 400.0) sub = 3;
  if (options.bins_per_cutoff > 0) sub = std::min(options.bins_per_cutoff, 16);
  // Empty bins cost one counter each (the stencil is walked per atom, never per bin), so
  // a few bins per atom are cheap; the cap keeps a few atoms in a huge box at O(N).
  const double max_bins = std::min(8.0 * static_cast<double>(N) + 1024.0, 1073741824.0);
  double nb[3];
  for (int k = 0; k < 3; ++k) {
    nb[k] = std::floor(extent[k] * basis.spacing[k] / (reach / sub));
    nb[k] = std::min(std::max(nb[k], 1.0), max_bins);
  }
  // cap the number of bins at O(N): a few atoms in a huge box must stay cheap
  while (nb[0] * nb[1] * nb[2] > max_bins) {
    int k = 0;
    for (int a = 1; a < 3; ++a) {
      if (nb[a] > nb[k]) k = a;
    }
    const double scale = std::cbrt(nb[0] * nb[1] * nb[2] / max_bins);
    nb[k] = std::max(1.0, std::min(nb[k] - 1.0, std::floor(nb[k] / scale)));
  }
  Grid& grid = plan.grid;
  double stencil_size = 1.0;
  Vec3* edge = plan.edge;
  for (int k = 0; k < 3; ++k) {
    grid.n[k] = static_cast<int>(nb[k]);
    grid.periodic[k] = pbc[k];
    const double width = extent[k] * basis.spacing[k] / grid.n[k];  // perpendicular
    double m = width > 0.0 ? std::ceil(reach / width * (1.0 - 1e-12)) : 0.0;
    if (!pbc[k]) m = std::min(m, static_cast<double>(grid.n[k] - 1));
    if (m > 1e6) m = 1e6;  // caught below
    grid.m[k] = static_cast<int>(m);
    stencil_size *= 2.0 * m + 1.0;
    const double frac_width = extent[k] / grid.n[k];
    for (int a = 0; a < 3; ++a) edge[k][a] = frac_width * basis.rows[k][a];
  }
  // image shifts along periodic axes: floor((b + d) / n) for b in [0, n), |d| <= m
  grid.kmax = 1;
  for (int k = 0; k < 3; ++k) {
    if (pbc[k]) {
      grid.kmax = std::max(grid.kmax, (grid.m[k] + grid.n[k] - 1) / grid.n[k] + 1);
    }
  }
  grid.shift_bits = 1;
  while ((int64_t(1) << grid.shift_bits) < 2 * int64_t(grid.kmax) + 1) ++grid.shift_bits;
  int index_bits = 1;
  while ((int64_t(1) << index_bits) < N) ++index_bits;
  if (stencil_size > 2e8 || index_bits + 3 * grid.shift_bits > 64) {
    throw std::invalid_argument("cutoff " + std::to_string(cutoff) +
                                " is too large for this cell: it reaches too many periodic images");
  }

  // stencil rows
  std::vector<StencilRow>& rows = plan.rows;
  for (int d0 = -grid.m[0]; d0 <= grid.m[0]; ++d0) {
    for (int d1 = -grid.m[1]; d1 <= grid.m[1]; ++d1) {
      int lo = grid.m[2] + 1, hi = -grid.m[2] - 1;
      for (int d2 = -grid.m[2]; d2 <= grid.m[2]; ++d2) {
        const int d[3] = {d0, d1, d2};
        if (bins_may_interact(d, edge, reach)) {
          lo = d2;
          break;
        }
      }
      for (int d2 = grid.m[2]; d2 >= lo; --d2) {
        const int d[3] = {d0, d1, d2};
        if (bins_may_interact(d, edge, reach)) {
          hi = d2;
          break;
        }
      }
      if (lo <= hi) rows.push_back({d0, d1, lo, hi});
    }
  }
  return plan;
}

}  // namespace

GridInfo describe_grid(const double* positions, std::size_t n_atoms, const double cell[9],
                       const bool pbc[3], const NeighborOptions& options) {
  Workspace ws;
  RawBuffer<double> frac;
  const Plan plan = make_plan(positions, n_atoms, cell, pbc, options, ws, frac);
  GridInfo info;
  for (int k = 0; k < 3; ++k) {
    info.n_bins[k] = plan.grid.n[k];
    info.reach_bins[k] = plan.grid.n[k] > 0 ? plan.grid.m[k] : 0;
    for (int a = 0; a < 3; ++a)
      info.bin_edges[3 * k + a] = plan.grid.n[k] > 0 ? plan.edge[k][a] : 0.0;
  }
  for (const StencilRow& row : plan.rows) info.rows.push_back({row.d0, row.d1, row.lo, row.hi});
  return info;
}

void compute_neighbor_list(const double* positions, std::size_t n_atoms, const double cell[9],
                           const bool pbc[3], const NeighborOptions& options, NeighborList& out) {
  free_neighbor_list(out);
  Workspace ws;
  RawBuffer<double> frac;
  const Plan plan = make_plan(positions, n_atoms, cell, pbc, options, ws, frac);
  if (plan.grid.n[0] == 0) {
    RawBuffer<int64_t> bi, bj;
    RawBuffer<int32_t> bs;
    RawBuffer<double> bv;
    out.i = bi.release();
    out.j = bj.release();
    out.shifts = bs.release();
    out.vectors = bv.release();
    return;
  }
  const Basis& basis = plan.basis;
  const Grid& grid = plan.grid;
  const std::vector<StencilRow>& rows = plan.rows;
  const double* extent = plan.extent;
  const double* fmin = plan.fmin;
  const double cutoff = options.cutoff;
  const double per_cutoff_cube = plan.per_cutoff_cube;
  const int64_t N = static_cast<int64_t>(n_atoms);

  // counting sort of the atoms by bin (stable: ascending original index in each bin)
  const int64_t n_bins = int64_t(grid.n[0]) * grid.n[1] * grid.n[2];
  RawBuffer<int32_t> bin_of(n_atoms);
  ws.bin_start.resize(n_bins + 1);
  std::memset(ws.bin_start.data(), 0, (n_bins + 1) * sizeof(int64_t));
  for (int64_t i = 0; i < N; ++i) {
    int64_t b[3];
    for (int k = 0; k < 3; ++k) {
      double u = frac[3 * i + k];
      if (!pbc[k]) u = extent[k] > 0.0 ? (u - fmin[k]) / extent[k] : 0.0;
      int64_t v = static_cast<int64_t>(u * grid.n[k]);
      b[k] = std::min<int64_t>(std::max<int64_t>(v, 0), grid.n[k] - 1);
    }
    const int64_t bin = (b[0] * grid.n[1] + b[1]) * grid.n[2] + b[2];
    bin_of[i] = static_cast<int32_t>(bin);
    ws.bin_start[bin + 1] += 1;
  }
  for (int64_t b = 0; b < n_bins; ++b) ws.bin_start[b + 1] += ws.bin_start[b];
  {
    RawBuffer<int64_t> fill(n_bins);
    std::memcpy(fill.data(), ws.bin_start.data(), n_bins * sizeof(int64_t));
    ws.px.resize(n_atoms);
    ws.py.resize(n_atoms);
    ws.pz.resize(n_atoms);
    ws.key_base.resize(n_atoms);
    ws.atom.resize(n_atoms);
    const int key_shift = 3 * grid.shift_bits;
    for (int64_t i = 0; i < N; ++i) {
      const int64_t k = fill[bin_of[i]]++;
      ws.px[k] = ws.wrapped[3 * i];
      ws.py[k] = ws.wrapped[3 * i + 1];
      ws.pz[k] = ws.wrapped[3 * i + 2];
      ws.key_base[k] = static_cast<uint64_t>(i) << key_shift;
      ws.atom[k] = static_cast<int32_t>(i);
    }
  }

  int n_threads = options.n_threads;
  if (n_threads <= 0) {
    n_threads = N < 4096 ? 1 : static_cast<int>(std::thread::hardware_concurrency());
  }
  // Below a few thousand atoms, starting threads (and waiting for the slowest one on a
  // busy machine) costs more than it saves.
  n_threads =
      std::max(1, std::min({n_threads, 64, static_cast<int>(std::max<int64_t>(N / 2048, 1))}));

  // Phase 1: keys, threads over contiguous bin ranges holding ~equal numbers of atoms.
  ws.key_offset.resize(n_atoms);
  ws.key_count.resize(n_atoms);
  ws.key_thread.resize(n_atoms);
  std::vector<RawBuffer<uint64_t>> keys(n_threads);
  std::vector<int64_t> bin_split(n_threads + 1, n_bins);
  bin_split[0] = 0;
  for (int t = 1; t < n_threads; ++t) {
    const int64_t target = N * t / n_threads;
    bin_split[t] = std::upper_bound(ws.bin_start.data(), ws.bin_start.data() + n_bins + 1, target) -
                   ws.bin_start.data() - 1;
    bin_split[t] = std::max(bin_split[t], bin_split[t - 1]);
  }
  const double cutoff2 = cutoff * cutoff;
  run_threads(n_threads, [&](int t) {
    // pairs per atom ~ 4.19 * atoms per cutoff^3 in a homogeneous system; more is
    // grown on demand, so cap what is reserved up front
    const double expected =
        static_cast<double>(N / n_threads + 1) * (std::min(per_cutoff_cube * 4.3, 1e4) + 4.0);
    keys[t].reserve(static_cast<std::size_t>(std::min(expected, 67108864.0)));
    if (options.full_list) {
      find_pairs<true>(basis, grid, rows, ws, cutoff2, bin_split[t], bin_split[t + 1],
                       static_cast<uint8_t>(t), keys[t], ws.key_offset.data(), ws.key_count.data(),
                       ws.key_thread.data());
    } else {
      find_pairs<false>(basis, grid, rows, ws, cutoff2, bin_split[t], bin_split[t + 1],
                        static_cast<uint8_t>(t), keys[t], ws.key_offset.data(), ws.key_count.data(),
                        ws.key_thread.data());
    }
  });

  // Phase 2: exact offsets, one allocation, threads over ~equal numbers of pairs.
  RawBuffer<int64_t> pair_start(n_atoms + 1);
  pair_start[0] = 0;
  for (int64_t i = 0; i < N; ++i) pair_start[i + 1] = pair_start[i] + ws.key_count[i];
  const int64_t n_pairs = pair_start[N];
  RawBuffer<int64_t> oi(n_pairs), oj(n_pairs);
  RawBuffer<int32_t> os(3 * n_pairs);
  RawBuffer<double> ov(3 * n_pairs);
  NeighborList result;
  result.n_pairs = static_cast<std::size_t>(n_pairs);
  result.i = oi.data();
  result.j = oj.data();
  result.shifts = os.data();
  result.vectors = ov.data();
  std::vector<int64_t> atom_split(n_threads + 1, N);
  atom_split[0] = 0;
  for (int t = 1; t < n_threads; ++t) {
    const int64_t target = n_pairs * t / n_threads;
    atom_split[t] = std::upper_bound(pair_start.data(), pair_start.data() + N + 1, target) -
                    pair_start.data() - 1;
    atom_split[t] = std::max(atom_split[t], atom_split[t - 1]);
  }
  const ShiftTable table = make_shift_table(basis, grid);
  run_threads(n_threads, [&](int t) {
    write_pairs(basis, grid, table, ws, keys, pair_start.data(), atom_split[t], atom_split[t + 1],
                result);
  });
  out.n_pairs = result.n_pairs;
  out.i = oi.release();
  out.j = oj.release();
  out.shifts = os.release();
  out.vectors = ov.release();
}

}  // namespace symbreak
