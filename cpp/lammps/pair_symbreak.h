// pair_style symbreak: a non-equivariant TorchScript model (symbreak's PET), plain or
// rotationally averaged, as a LAMMPS pair style loaded with `plugin load`.
//
//   pair_style symbreak MODEL [average none|random|legendre L|lebedev L] [inversion yes|no]
//                             [seed N] [rotation_batch K] [dtype float32|float64]
//                             [mode auto|images|ghosts]
//   pair_coeff * * ELEMENT...   (one element symbol per atom type)
//
// MODEL is an exported model file or the name of a model shipped in the symbreak package.
// Units metal, newton pair on. See pair_symbreak.cpp for how ghosts and averaging work.

#ifndef SYMBREAK_PAIR_SYMBREAK_H
#define SYMBREAK_PAIR_SYMBREAK_H

#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "pair.h"

namespace symbreak {
struct Model;
}

namespace LAMMPS_NS {

class PairSymbreak : public Pair {
 public:
  explicit PairSymbreak(LAMMPS* lmp);
  ~PairSymbreak() override;

  void compute(int eflag, int vflag) override;
  void finish() override;
  void settings(int narg, char** arg) override;
  void coeff(int narg, char** arg) override;
  void init_style() override;
  double init_one(int i, int j) override;
  void* extract(const char* name, int& dim) override;
  double memory_usage() override;

 private:
  enum class Average { None, Random, Legendre, Lebedev };
  enum class Mode { Auto, Images, Ghosts };

  void allocate();
  void set_grid();              // rot_/weights_ for deterministic policies
  void draw_random_rotation();  // rot_/weights_ for `average random`
  void build_graph_images();    // one rank: ghosts are images of owned atoms
  void build_graph_ghosts();    // owned atoms + ghosts out to the receptive field
  void find_reverse_edges(bool images);
  std::string policy_string() const;

  std::shared_ptr<symbreak::Model> model_;
  std::string model_arg_;
  std::vector<int> type_species_;  // LAMMPS type (1..ntypes) -> index into model species

  // averaging policy
  Average average_ = Average::None;
  int order_ = 1;
  bool inversion_ = false;
  std::uint64_t seed_ = 12345;
  int rotation_batch_ = 0;  // rotations per model call; 0: automatic
  std::mt19937_64 rng_;
  std::vector<double> rot_;      // [K, 3, 3], r' = R r
  std::vector<double> weights_;  // [K], sum 1

  Mode mode_request_ = Mode::Auto;
  Mode mode_ = Mode::Images;
  bool report_graph_ = true;
  double timing_[3] = {0.0, 0.0, 0.0};  // graph building, model, tallying (s, this run)
  long timing_calls_ = 0;

  // graph of one step (model atoms: owned atoms first, numbered as in LAMMPS)
  int n_model_ = 0;
  std::vector<int> lmp_of_;              // model atom -> LAMMPS atom index
  std::vector<std::int64_t> species_;    // per model atom
  std::vector<std::int64_t> centers_;    // per edge, model atom
  std::vector<std::int64_t> neighbors_;  // per edge, model atom
  std::vector<int> neighbor_lmp_;        // per edge, LAMMPS index of the neighbour as seen
  std::vector<int> shifts_;              // per edge, lattice shift (images mode)
  std::vector<double> vectors_;          // per edge, x_j - x_i (A)
  std::vector<std::int64_t> reverse_;    // per edge, index of (j, i, -S)
  std::vector<std::int64_t> row_begin_, row_end_;  // edges of each model atom
  std::vector<int> hop_, model_of_, tag_owner_;

  // diagnostics (global, same on every rank)
  double energy_rot_std_ = 0.0;
  double n_rotations_ = 1.0;
};

}  // namespace LAMMPS_NS

#endif
