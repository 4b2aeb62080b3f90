// pair_style symbreak: a non-equivariant TorchScript model (symbreak's PET), plain or
// rotationally averaged, as a LAMMPS pair style loaded with `plugin load`.
//
//   pair_style symbreak MODEL [average POLICY] [rotation_batch K] [dtype float32|float64]
//                             [device cpu|cuda|cuda:N] [mode auto|images|ghosts] [extensions DIR]
//   pair_coeff * * ELEMENT...   (one element symbol per atom type)
//
// POLICY is one token of symbreak's policy grammar (none | random | legendre:L | lebedev:L,
// options +inv, +seed=N, +max=N), e.g. `average lebedev:3+inv`. The older keyword form is an
// alias: `average lebedev 3 inversion yes`, `average random seed 7`.
//
// MODEL is an exported model file (contract 2) or the name of a model shipped in the symbreak
// package. Units metal, newton pair on. See pair_symbreak.cpp for how ghosts are handled.
// `device`: where the model runs (default cpu); the graph is built on the CPU and goes to the
// device once per force call.
//
// A metatomic model (an AtomisticModel file, e.g. from metatrain's `mtt export`) is served as
// it is, set in the wrapper template the build writes (model_file.cpp), or wrapped once by
// `symbreak export MODEL.pt --output W.pt`. `extensions DIR`: where the model's TorchScript
// extensions are (when they are not installed).

#ifndef SYMBREAK_PAIR_SYMBREAK_H
#define SYMBREAK_PAIR_SYMBREAK_H

#include <cstdint>
#include <memory>
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
  enum class Mode { Auto, Images, Ghosts };

  void allocate();
  void check_masses();
  void build_graph_images();  // one rank: ghosts are images of owned atoms
  void build_graph_ghosts();  // owned atoms + ghosts out to the receptive field
  void find_reverse_edges(bool images);
  void check_distance(int i, int j, const double* d);  // overlapping atoms: error

  std::shared_ptr<symbreak::Model> model_;
  std::vector<int> type_z_;        // LAMMPS type (1..ntypes) -> atomic number
  std::vector<int> type_species_;  // LAMMPS type -> index into the model's species
  bool masses_checked_ = false;

  // averaging: the policy text of the model file's grammar, and the force-call counter
  std::string policy_ = "none";
  std::vector<double> weights_ = {1.0};  // [K] of the policy (the same for every draw)
  std::int64_t counter_ = 0;             // force calls since the pair_style command (random draws)
  int rotation_batch_ = 0;  // rotations per model call; 0: automatic (the file's budget)

  Mode mode_request_ = Mode::Auto;
  Mode mode_ = Mode::Images;
  bool report_graph_ = true;
  double timing_[3] = {0.0, 0.0, 0.0};  // graph building, model, tallying (s, this run)
  long timing_calls_ = 0;

  // graph of one step (model atoms: owned atoms first, numbered as in LAMMPS)
  int n_model_ = 0;
  std::vector<int> lmp_of_;              // model atom -> LAMMPS atom index
  std::vector<std::int64_t> numbers_;    // per model atom, atomic number
  std::vector<double> positions_;        // per model atom (A)
  std::vector<std::int64_t> centers_;    // per edge, model atom
  std::vector<std::int64_t> neighbors_;  // per edge, model atom
  std::vector<int> neighbor_lmp_;        // per edge, LAMMPS index of the neighbour as seen
  std::vector<std::int64_t> shifts_;     // per edge, lattice shift (zero in ghosts mode)
  std::vector<double> vectors_;          // per edge, r_ij (A), for the per-atom virial
  std::vector<std::int64_t> reverse_;    // per edge, index of (j, i, -S)
  std::vector<std::int64_t> row_begin_, row_end_;  // edges of each model atom
  std::vector<int> hop_, model_of_, tag_owner_;

  // diagnostics (global, same on every rank)
  double energy_rot_std_ = 0.0;
  double n_rotations_ = 1.0;
  double torque_[3] = {0.0, 0.0, 0.0};
  double forces_rot_std_ = 0.0;  // images mode only (-1 in ghosts mode)
};

}  // namespace LAMMPS_NS

#endif
