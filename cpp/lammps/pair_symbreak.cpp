// pair_style symbreak: see pair_symbreak.h for the syntax.
//
// An adapter: the exported model file (symbreak.contract, contract version 2) does all the
// physics in one entry point, `compute` (the policy's rotations, random draws included, the
// averaging, gradients, virial, torque and spreads). The plugin builds the graph from
// LAMMPS's neighbour list, calls `compute` once per force call, and tallies its outputs.
//
// Two ways to give the model the atoms it needs:
//
//   images (default on one MPI rank): every ghost is a periodic image of an owned atom.
//     The model sees the owned atoms only; an edge to a ghost becomes an edge to the atom it
//     is an image of, labelled by its integer lattice shift S (r_ij = x_j - x_i + S h, h the
//     LAMMPS cell with lattice vectors as rows). Exact, and costs the owned atoms only.
//   ghosts (default on several ranks): the model sees owned atoms and ghosts out to its
//     receptive field (n_layers x cutoff, plus the skin), with the ghosts' own neighbours,
//     all shifts zero. Atoms more than n_layers edges away from every owned atom cannot
//     change the owned atoms' energies and are left out, as are edges between two atoms
//     n_layers away. Only the owned atoms' energies count (`selected`); forces on ghosts go
//     home by LAMMPS's reverse communication (newton pair on).
//
// metatomic models: a contract file around one (symbreak.metatomic.averaged.MetatomicAveraged,
// written by `symbreak export MODEL.pt --output W.pt`) is served like the PET: its cutoff (the
// largest neighbour list it requests) and receptive field (its interaction range) are the
// file's attributes, owned atoms are `selected`; in ghosts mode every edge between two
// atoms the model sees is given (as metatomic's engines do), not only those the hops need.
// Its metatomic/metatensor TorchScript classes come from the libraries linked in
// (model_file.cpp). A raw metatomic file (AtomisticModel.save, mtt export) is set in the same
// wrapper, scripted at build time as a template (symbreak.metatomic.template).
//
// Reading the file (shipped-model names, the contract and metadata checks, dtype, the cache
// that keeps a model loaded across pair_style commands) is model_file.cpp's load_model.
//
// Virial: the file's (symmetric part of -sum_e r_e (x) dE/dr_e over this rank's edges; LAMMPS
// sums the ranks). f.r (virial_fdotr_compute) would keep one off-diagonal of the
// unsymmetrised tensor, so it is not used. Per-atom virial: each edge's symmetrised
// -r (x) g from the file's edge gradients, half to each end.

// torch first: LAMMPS headers define macros (FLERR, NEIGHMASK, ...).
#include "pair_symbreak.h"

#include <ATen/Parallel.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "model_file.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

using namespace LAMMPS_NS;

namespace symbreak {

//! Seed given to a `random` policy without one, so that every rank draws the same rotations.
constexpr long long kDefaultSeed = 12345;
//! `seed` keyword not given.
constexpr long long kNoSeed = std::numeric_limits<long long>::min();
//! As symbreak.evaluator.JIT_OPTIMIZE: TorchScript's optimising executor made the
//! default-size PET slower and hungrier on CPU.
constexpr bool kJitOptimize = false;

namespace {

// The policy text of the file's grammar, from the one-token form (`average lebedev:3+inv`)
// or the older keywords (`average lebedev 3 inversion yes seed 7`): the keywords replace
// what the text says, as AveragingPolicy.with_options. A random policy without a seed gets
// kDefaultSeed. Throws the grammar's message.
std::string policy_text(Model& model, const std::string& text, int inversion, long long seed,
                        bool& seed_defaulted) {
  auto parsed = model.module.get_method("parse_policy")({text}).toTuple();
  const auto& e = parsed->elements();
  const std::string family = e[0].toStringRef();
  const long long order = e[1].toInt();
  const bool inv = inversion < 0 ? e[2].toBool() : inversion == 1;
  const bool seed_given = seed != kNoSeed;  // the keyword, negative values included
  long long seed_out = seed_given ? seed : e[3].toInt();
  const long long max_rotations = e[4].toInt();
  seed_defaulted = family == "random" && !seed_given && seed_out == -1;
  if (seed_defaulted) seed_out = kDefaultSeed;
  std::string out =
      family == "none" || family == "random" ? family : family + ":" + std::to_string(order);
  if (inv) out += "+inv";
  if (seed_given || seed_out != -1) out += "+seed=" + std::to_string(seed_out);
  if (max_rotations != 2000) out += "+max=" + std::to_string(max_rotations);
  model.module.get_method("parse_policy")({out});  // the keywords' values, through the grammar
  return out;
}

}  // namespace
}  // namespace symbreak

/* ---------------------------------------------------------------------- */

PairSymbreak::PairSymbreak(LAMMPS* lmp) : Pair(lmp) {
  single_enable = 0;
  restartinfo = 0;
  one_coeff = 1;
  manybody_flag = 1;
  no_virial_fdotr_compute = 1;
  centroidstressflag = CENTROID_NOTAVAIL;
  // compute pair symbreak: c_ID[1] spread of the per-rotation energies (eV), c_ID[2] K,
  // c_ID[3..5] net torque of the model (eV), c_ID[6] spread of the forces over rotations
  // (eV/A, RMS over atoms; one rank only: -1 in ghosts mode).
  nextra = 6;
  pvector = new double[nextra];
  for (int k = 0; k < nextra; ++k) pvector[k] = 0.0;
}

PairSymbreak::~PairSymbreak() {
  delete[] pvector;
  if (allocated) {
    memory->destroy(setflag);
    memory->destroy(cutsq);
    memory->destroy(cutghost);
  }
}

void PairSymbreak::allocate() {
  allocated = 1;
  const int n = atom->ntypes + 1;
  memory->create(setflag, n, n, "pair:setflag");
  memory->create(cutsq, n, n, "pair:cutsq");
  memory->create(cutghost, n, n, "pair:cutghost");
  for (int i = 0; i < n; ++i)
    for (int j = 0; j < n; ++j) setflag[i][j] = 0;
  type_z_.assign(n, -1);
  type_species_.assign(n, -1);
}

/* ---------------------------------------------------------------------- */

void PairSymbreak::settings(int narg, char** arg) {
  if (narg < 1)
    error->all(FLERR, "pair_style symbreak: missing model (a model file or a shipped model name)");

  std::string average = "none";
  int inversion = -1;                  // -1: as the policy text says
  long long seed = symbreak::kNoSeed;  // as the policy text says
  int rotation_batch = 0;
  std::string dtype = "auto";
  std::string extensions;  // a metatomic model's TorchScript extensions directory
  torch::Device device = torch::kCPU;
  Mode mode = Mode::Auto;
  for (int i = 1; i < narg; i += 2) {
    const std::string key = arg[i];
    if (i + 1 >= narg) error->all(FLERR, "pair_style symbreak: keyword '{}' needs a value", key);
    const std::string value = arg[i + 1];
    if (key == "average") {
      average = value;
      // the older form `average legendre|lebedev L`
      if ((value == "legendre" || value == "lebedev") && i + 2 < narg &&
          utils::is_integer(arg[i + 2])) {
        average += ":" + std::string(arg[i + 2]);
        ++i;
      }
    } else if (key == "inversion") {
      inversion = utils::logical(FLERR, value, false, lmp);
    } else if (key == "seed") {
      if (!utils::is_integer(value))
        error->all(FLERR, "pair_style symbreak: seed must be an integer, not '{}'", value);
      seed = std::strtoll(value.c_str(), nullptr, 10);  // saturates: the grammar refuses
    } else if (key == "rotation_batch") {
      rotation_batch = utils::inumeric(FLERR, value, false, lmp);
      if (rotation_batch < 0) error->all(FLERR, "pair_style symbreak: rotation_batch must be >= 0");
    } else if (key == "dtype") {
      if (value != "float32" && value != "float64")
        error->all(FLERR, "pair_style symbreak: dtype must be float32 or float64, not '{}'", value);
      dtype = value;
    } else if (key == "device") {
      try {
        device = symbreak::resolve_device(value);
      } catch (const std::exception& err) {
        error->all(FLERR, "pair_style symbreak: {}", err.what());
      }
    } else if (key == "extensions") {
      extensions = value;
    } else if (key == "mode") {
      if (value == "auto")
        mode = Mode::Auto;
      else if (value == "images")
        mode = Mode::Images;
      else if (value == "ghosts")
        mode = Mode::Ghosts;
      else
        error->all(FLERR, "pair_style symbreak: mode must be auto, images or ghosts, not '{}'",
                   value);
    } else {
      error->all(FLERR,
                 "pair_style symbreak: unknown keyword '{}' (valid: average, inversion, seed, "
                 "rotation_batch, dtype, device, mode, extensions)",
                 key);
    }
  }

  std::shared_ptr<symbreak::Model> model;
  bool from_cache = false;
  try {
    model = symbreak::load_model(symbreak::resolve_model_path(arg[0]), dtype, extensions, device,
                                 from_cache);
  } catch (const std::exception& err) {
    error->all(FLERR, "pair_style symbreak: {}", err.what());
  }
  std::string policy;
  std::vector<double> weights;
  bool seed_defaulted = false;
  try {
    policy = symbreak::policy_text(*model, average, inversion, seed, seed_defaulted);
    // grids beyond the file's tables are refused here, not at the first force call
    auto rotations = model->module.get_method("policy_rotations")({policy, 0}).toTuple();
    auto w = rotations->elements()[1].toTensor().to(torch::kCPU, torch::kFloat64).contiguous();
    weights.assign(w.data_ptr<double>(), w.data_ptr<double>() + w.numel());
  } catch (const std::exception& err) {
    error->all(FLERR, "pair_style symbreak: {}", symbreak::script_error(err));
  }
  // Another model (or dtype, or device): the type -> species map must be given again.
  if (model_ && model_ != model && allocated) {
    for (int i = 0; i <= atom->ntypes; ++i)
      for (int j = 0; j <= atom->ntypes; ++j) setflag[i][j] = 0;
  }
  model_ = model;
  policy_ = policy;
  weights_ = weights;
  n_rotations_ = static_cast<double>(weights_.size());
  counter_ = 0;
  rotation_batch_ = rotation_batch;
  mode_request_ = mode;

  if (comm->me == 0) {
    std::string species;
    for (int z : model_->species)
      species += (species.empty() ? "" : " ") + symbreak::element_symbol(z);
    utils::logmesg(
        lmp,
        "pair_style symbreak: {} model {} ({} on {}, species {}, cutoff {} A, receptive "
        "field {} A)\npair_style symbreak: average {} ({} rotations per step){}\n",
        from_cache ? "cached" : "loaded", model_->path,
        model_->dtype == torch::kFloat64 ? "float64" : "float32", model_->device.str(), species,
        model_->cutoff, model_->receptive_field, policy_, n_rotations_,
        seed_defaulted ? " (the default seed: every rank draws the same rotations)" : "");
    if (model_->metatomic)
      utils::logmesg(lmp,
                     "pair_style symbreak: a metatomic model{} ({}), served through symbreak's "
                     "contract; the per-atom virial (compute stress/atom) is built from its edge "
                     "gradients, which assumes that the model reads the geometry only through "
                     "its neighbour lists (energy, forces and virial are exact in any case)\n",
                     model_->metatomic_name.empty() ? "" : " '" + model_->metatomic_name + "'",
                     symbreak::metatomic_versions());
  }
}

/* ---------------------------------------------------------------------- */

void PairSymbreak::coeff(int narg, char** arg) {
  if (!allocated) allocate();
  const int ntypes = atom->ntypes;
  if (narg != 2 + ntypes || std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
    error->all(FLERR,
               "pair_coeff for pair_style symbreak must be '* *' followed by one element per "
               "atom type ({} types), e.g. 'pair_coeff * * O H'",
               ntypes);
  std::string known;
  for (int z : model_->species) known += (known.empty() ? "" : " ") + symbreak::element_symbol(z);
  for (int t = 1; t <= ntypes; ++t) {
    const std::string symbol = arg[1 + t];
    if (symbol == "NULL")
      error->all(FLERR,
                 "pair_style symbreak: NULL in pair_coeff (type {}) is not supported: the model "
                 "must see every atom, so map every type to an element of the model ({})",
                 t, known);
    const int z = symbreak::atomic_number(symbol);
    if (z < 0)
      error->all(FLERR, "pair_style symbreak: '{}' (type {}) is not an element symbol", symbol, t);
    const auto it = std::find(model_->species.begin(), model_->species.end(), z);
    if (it == model_->species.end())
      error->all(FLERR,
                 "pair_style symbreak: element {} (type {}) is not a species of model {} "
                 "(it knows {})",
                 symbol, t, model_->path, known);
    type_z_[t] = z;
    type_species_[t] = static_cast<int>(it - model_->species.begin());
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = setflag[j][i] = 1;
  masses_checked_ = false;
}

// A type whose mass is far from the standard mass of its element is most likely mapped to
// the wrong element (pair_coeff * * H O for types O, H): silent garbage otherwise.
void PairSymbreak::check_masses() {
  if (masses_checked_ || !atom->mass || !atom->mass_setflag) return;
  masses_checked_ = true;
  if (comm->me != 0) return;
  for (int t = 1; t <= atom->ntypes; ++t) {
    if (!atom->mass_setflag[t] || type_species_[t] < 0) continue;
    const double standard = model_->masses[type_species_[t]];
    const double mass = atom->mass[t];
    if (std::fabs(mass - standard) > 0.05 * standard)
      error->warning(FLERR,
                     "pair_style symbreak: atom type {} has mass {:.6g} but pair_coeff maps it "
                     "to {} (standard mass {:.6g} amu): are the elements of pair_coeff in the "
                     "order of the atom types?",
                     t, mass, symbreak::element_symbol(type_z_[t]), standard);
  }
}

/* ---------------------------------------------------------------------- */

void PairSymbreak::init_style() {
  if (std::strcmp(update->unit_style, "metal") != 0)
    error->all(FLERR,
               "pair_style symbreak requires 'units metal' (A, eV), not 'units {}': the model "
               "works in A and eV",
               update->unit_style);
  if (force->newton_pair == 0)
    error->all(FLERR,
               "pair_style symbreak requires newton pair on: forces on ghost atoms are sent to "
               "their owners by reverse communication");
  if (domain->dimension != 3) error->all(FLERR, "pair_style symbreak requires a 3d simulation");
  check_masses();

  report_graph_ = true;
  timing_[0] = timing_[1] = timing_[2] = 0.0;
  timing_calls_ = 0;
  mode_ = mode_request_ == Mode::Auto ? (comm->nprocs == 1 ? Mode::Images : Mode::Ghosts)
                                      : mode_request_;
  if (mode_ == Mode::Images) {
    if (comm->nprocs > 1)
      error->all(FLERR, "pair_style symbreak: mode images needs one MPI rank (use mode ghosts)");
    if (!atom->tag_enable)
      error->all(FLERR, "pair_style symbreak: mode images needs atom IDs (use mode ghosts)");
    ghostneigh = 0;
    neighbor->add_request(this, NeighConst::REQ_FULL);
  } else {
    // Ghosts (with their own neighbours) out to the receptive field; LAMMPS adds nothing
    // to the user ghost cutoff, so the skin is added here (atoms move by up to skin/2).
    ghostneigh = 1;
    neighbor->add_request(this, NeighConst::REQ_FULL | NeighConst::REQ_GHOST);
    const double needed = model_->receptive_field + neighbor->skin;
    if (comm->cutghostuser < needed) comm->cutghostuser = needed;
  }
}

double PairSymbreak::init_one(int i, int j) {
  if (setflag[i][j] == 0) error->all(FLERR, "All pair coeffs are not set");
  if (ghostneigh) cutghost[i][j] = cutghost[j][i] = model_->cutoff;
  return model_->cutoff;
}

void* PairSymbreak::extract(const char* name, int& dim) {
  dim = 0;
  if (std::strcmp(name, "energy_rot_std") == 0) return &energy_rot_std_;
  if (std::strcmp(name, "n_rotations") == 0) return &n_rotations_;
  if (std::strcmp(name, "forces_rot_std") == 0) return &forces_rot_std_;
  if (std::strcmp(name, "cutoff") == 0 && model_) return &model_->cutoff;
  return nullptr;
}

double PairSymbreak::memory_usage() {
  double bytes = Pair::memory_usage();
  bytes += static_cast<double>(centers_.capacity() + neighbors_.capacity() + reverse_.capacity() +
                               shifts_.capacity()) *
           sizeof(std::int64_t);
  bytes += static_cast<double>(vectors_.capacity() + positions_.capacity()) * sizeof(double);
  return bytes;
}

/* ----------------------------------------------------------------------
   graphs
------------------------------------------------------------------------- */

// Closer than the file's min_distance is an input error (as in every engine), named by
// LAMMPS atom IDs; the model would give NaN or huge forces.
void PairSymbreak::check_distance(int i, int j, const double* d) {
  const double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
  const double dmin = model_->min_distance;
  if (r2 < dmin * dmin)
    error->one(FLERR,
               "pair_style symbreak: atoms {} and {} (LAMMPS atom IDs) are {:.6g} A apart: "
               "overlapping atoms (closer than the model's minimum distance {} A)",
               atom->tag[i], atom->tag[j], std::sqrt(r2), dmin);
}

// One rank: model atoms = owned atoms; an edge to a ghost goes to the owned atom it is an
// image of (found by its tag), labelled by its lattice shift.
void PairSymbreak::build_graph_images() {
  const int nlocal = atom->nlocal;
  double** x = atom->x;
  const tagint* tag = atom->tag;
  const int* type = atom->type;
  const double rc2 = model_->cutoff * model_->cutoff;
  const double* hi = domain->h_inv;
  const double* h = domain->h;  // xprd yprd zprd yz xz xy
  // rows: a = (xprd, 0, 0), b = (xy, yprd, 0), c = (xz, yz, zprd)
  const double cell[3][3] = {{h[0], 0.0, 0.0}, {h[5], h[1], 0.0}, {h[4], h[3], h[2]}};

  tagint max_tag = 0;
  for (int i = 0; i < nlocal; ++i) max_tag = std::max(max_tag, tag[i]);
  tag_owner_.assign(static_cast<size_t>(max_tag) + 1, -1);
  for (int i = 0; i < nlocal; ++i) tag_owner_[tag[i]] = i;

  n_model_ = nlocal;
  lmp_of_.resize(nlocal);
  numbers_.resize(nlocal);
  positions_.resize(3 * static_cast<size_t>(nlocal));
  for (int i = 0; i < nlocal; ++i) {
    lmp_of_[i] = i;
    numbers_[i] = type_z_[type[i]];
    for (int c = 0; c < 3; ++c) positions_[3 * i + c] = x[i][c];
  }
  centers_.clear();
  neighbors_.clear();
  neighbor_lmp_.clear();
  shifts_.clear();
  vectors_.clear();
  row_begin_.assign(nlocal, 0);
  row_end_.assign(nlocal, 0);
  for (int ii = 0; ii < list->inum; ++ii) {
    const int i = list->ilist[ii];
    const int* jlist = list->firstneigh[i];
    row_begin_[i] = static_cast<std::int64_t>(centers_.size());
    for (int jj = 0; jj < list->numneigh[i]; ++jj) {
      const int j = jlist[jj] & NEIGHMASK;
      double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
      if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= rc2) continue;
      check_distance(i, j, d);
      int owner = j;
      std::int64_t s[3] = {0, 0, 0};
      if (j >= nlocal) {
        owner = tag[j] <= max_tag ? tag_owner_[tag[j]] : -1;
        if (owner < 0)
          error->one(FLERR,
                     "pair_style symbreak: ghost atom {} is not an image of an owned atom "
                     "(use mode ghosts)",
                     tag[j]);
        const double e[3] = {x[j][0] - x[owner][0], x[j][1] - x[owner][1], x[j][2] - x[owner][2]};
        s[0] = std::llround(hi[0] * e[0] + hi[5] * e[1] + hi[4] * e[2]);
        s[1] = std::llround(hi[1] * e[1] + hi[3] * e[2]);
        s[2] = std::llround(hi[2] * e[2]);
        // r_ij as the model file computes it: x_owner - x_i + S h
        for (int c = 0; c < 3; ++c)
          d[c] =
              x[owner][c] - x[i][c] + (s[0] * cell[0][c] + s[1] * cell[1][c] + s[2] * cell[2][c]);
      }
      centers_.push_back(i);
      neighbors_.push_back(owner);
      neighbor_lmp_.push_back(j);
      shifts_.insert(shifts_.end(), s, s + 3);
      vectors_.insert(vectors_.end(), d, d + 3);
    }
    row_end_[i] = static_cast<std::int64_t>(centers_.size());
  }
  reverse_.assign(centers_.size(), -1);
  find_reverse_edges(true);
}

// Several ranks: owned atoms, then the ghosts within n_layers edges of an owned atom (breadth
// first), with every edge of the atoms within n_layers - 1 edges and its reverse. A metatomic
// model also gets the edges between two atoms n_layers away (all pairs of the atoms it sees,
// as metatomic's engines give: a model may combine its neighbours' own pairs).
void PairSymbreak::build_graph_ghosts() {
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double** x = atom->x;
  const int* type = atom->type;
  const double rc2 = model_->cutoff * model_->cutoff;
  const int layers = model_->n_layers;
  const bool all_pairs = model_->metatomic;
  if (!list->ghost) error->all(FLERR, "pair_style symbreak: internal error, no ghost neighbours");

  hop_.assign(nall, -1);
  model_of_.assign(nall, -1);
  lmp_of_.clear();
  for (int i = 0; i < nlocal; ++i) {
    hop_[i] = 0;
    model_of_[i] = i;
    lmp_of_.push_back(i);
  }
  centers_.clear();
  neighbors_.clear();
  neighbor_lmp_.clear();
  shifts_.clear();
  vectors_.clear();
  row_begin_.clear();
  row_end_.clear();
  // Model atoms are processed in order (breadth first: every atom at n_layers hops is known
  // before the first of them is processed); those with hop < layers get all their edges,
  // those at n_layers hops (all_pairs) their edges to model atoms.
  for (size_t m = 0; m < lmp_of_.size(); ++m) {
    const int a = lmp_of_[m];
    row_begin_.push_back(static_cast<std::int64_t>(centers_.size()));
    if (hop_[a] < layers || all_pairs) {
      const int* jlist = list->firstneigh[a];
      for (int jj = 0; jj < list->numneigh[a]; ++jj) {
        const int j = jlist[jj] & NEIGHMASK;
        if (hop_[j] < 0 && hop_[a] >= layers) continue;  // beyond the model's atoms
        const double d[3] = {x[j][0] - x[a][0], x[j][1] - x[a][1], x[j][2] - x[a][2]};
        if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= rc2) continue;
        check_distance(a, j, d);
        if (hop_[j] < 0) {
          hop_[j] = hop_[a] + 1;
          model_of_[j] = static_cast<int>(lmp_of_.size());
          lmp_of_.push_back(j);
        }
        centers_.push_back(static_cast<std::int64_t>(m));
        neighbors_.push_back(model_of_[j]);
        neighbor_lmp_.push_back(j);
        vectors_.insert(vectors_.end(), d, d + 3);
      }
    }
    row_end_.push_back(static_cast<std::int64_t>(centers_.size()));
  }
  n_model_ = static_cast<int>(lmp_of_.size());
  numbers_.resize(n_model_);
  positions_.resize(3 * static_cast<size_t>(n_model_));
  for (int m = 0; m < n_model_; ++m) {
    numbers_[m] = type_z_[type[lmp_of_[m]]];
    for (int c = 0; c < 3; ++c) positions_[3 * m + c] = x[lmp_of_[m]][c];
  }

  // Atoms at n_layers hops have no rows (unless all_pairs): give them the reverses of the
  // edges that reach them (-d is exactly x_a - x_j). Their own outputs never reach an owned
  // atom's energy.
  const size_t n_row_edges = centers_.size();
  reverse_.assign(n_row_edges, -1);
  for (size_t e = 0; e < n_row_edges && !all_pairs; ++e) {
    if (hop_[neighbor_lmp_[e]] < layers) continue;
    reverse_[e] = static_cast<std::int64_t>(centers_.size());
    reverse_.push_back(static_cast<std::int64_t>(e));
    centers_.push_back(neighbors_[e]);
    neighbors_.push_back(centers_[e]);
    neighbor_lmp_.push_back(lmp_of_[centers_[e]]);
    for (int c = 0; c < 3; ++c) vectors_.push_back(-vectors_[3 * e + c]);
  }
  shifts_.assign(3 * centers_.size(), 0);
  find_reverse_edges(false);
}

// reverse_[e] = index of (j, i, -S) for edge e = (i, j, S), looked up in the neighbour's row
// (edges already paired, such as the appended ones of ghosts mode, are kept). In images mode
// the image's coordinates differ from x_i + S h in the last bits, so an edge at the cutoff
// (to 1e-9) may lack its partner: such edges (weight exp(-1e4) = 0) are dropped.
void PairSymbreak::find_reverse_edges(bool images) {
  const size_t n_edges = centers_.size();
  const double rc2 = model_->cutoff * model_->cutoff;
  for (size_t e = 0; e < n_edges; ++e) {
    if (reverse_[e] >= 0) continue;
    const std::int64_t i = centers_[e], j = neighbors_[e];
    for (std::int64_t f = row_begin_[j]; f < row_end_[j]; ++f) {
      if (neighbors_[f] != i) continue;
      if (images &&
          (shifts_[3 * f] != -shifts_[3 * e] || shifts_[3 * f + 1] != -shifts_[3 * e + 1] ||
           shifts_[3 * f + 2] != -shifts_[3 * e + 2]))
        continue;
      reverse_[e] = f;
      reverse_[f] = static_cast<std::int64_t>(e);
      break;
    }
  }
  size_t n_missing = 0;
  for (size_t e = 0; e < n_edges; ++e) {
    if (reverse_[e] >= 0) continue;
    ++n_missing;
    const double* d = &vectors_[3 * e];
    const double r2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
    if (!images || std::fabs(r2 - rc2) > 1e-9 * rc2)
      error->one(FLERR,
                 "pair_style symbreak: edge {} -> {} (|r| = {:.6f} A) has no reverse edge: "
                 "incomplete neighbour list (ghost cutoff too short?)",
                 atom->tag[lmp_of_[centers_[e]]], atom->tag[neighbor_lmp_[e]], std::sqrt(r2));
  }
  if (n_missing == 0) return;
  // drop the unpaired edges and renumber
  std::vector<std::int64_t> keep_index(n_edges, -1);
  std::int64_t kept = 0;
  for (size_t e = 0; e < n_edges; ++e)
    if (reverse_[e] >= 0) keep_index[e] = kept++;
  auto compact = [&](auto& v, int width) {
    std::int64_t out = 0;
    for (size_t e = 0; e < n_edges; ++e) {
      if (keep_index[e] < 0) continue;
      for (int c = 0; c < width; ++c) v[width * out + c] = v[width * e + c];
      ++out;
    }
    v.resize(width * out);
  };
  for (size_t e = 0; e < n_edges; ++e)
    if (keep_index[e] >= 0) reverse_[e] = keep_index[reverse_[e]];
  compact(centers_, 1);
  compact(neighbors_, 1);
  compact(neighbor_lmp_, 1);
  compact(reverse_, 1);
  compact(vectors_, 3);
  compact(shifts_, 3);
}

/* ----------------------------------------------------------------------
   energies, forces, virial
------------------------------------------------------------------------- */

void PairSymbreak::finish() {
  // Where the time went in this run (rank 0), for benchmarks and users choosing a policy.
  if (comm->me != 0 || timing_calls_ == 0) return;
  utils::logmesg(lmp,
                 "pair_style symbreak timing: {} force calls, per call {:.6g} s in the model "
                 "(torch forward + backward), {:.6g} s building graphs, {:.6g} s tallying\n",
                 timing_calls_, timing_[1] / timing_calls_, timing_[0] / timing_calls_,
                 timing_[2] / timing_calls_);
}

void PairSymbreak::compute(int eflag, int vflag) {
  using clock = std::chrono::steady_clock;
  const auto t_start = clock::now();
  ev_init(eflag, vflag);

  if (mode_ == Mode::Images)
    build_graph_images();
  else
    build_graph_ghosts();

  const int nlocal = atom->nlocal;
  const int n = n_model_;
  const std::int64_t n_edges = static_cast<std::int64_t>(centers_.size());
  const auto t_graph = clock::now();
  if (report_graph_) {  // once per run: what the model sees (rank 0)
    report_graph_ = false;
    if (comm->me == 0)
      utils::logmesg(lmp,
                     "pair_style symbreak: mode {}, rank 0 evaluates {} atoms ({} owned) and {} "
                     "edges per rotation, {} torch threads\n",
                     mode_ == Mode::Images ? "images" : "ghosts", n, nlocal, n_edges,
                     at::get_num_threads());
  }

  const auto n_rot = static_cast<std::int64_t>(n_rotations_);
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  torch::Tensor energy_rot = torch::zeros({1, n_rot}, f64);  // this rank's owned atoms
  // the policy's weights (the same for every draw of a random policy)
  torch::Tensor weights = torch::from_blob(weights_.data(), {n_rot}, f64);
  torch::Tensor forces, atomic, grad, virial_t, torque_t, forces_std, rot_std;
  double energy = 0.0;
  const std::int64_t counter = counter_++;

  if (n > 0) {
    try {
      torch::AutoGradMode grad_mode(true);
      torch::jit::GraphOptimizerEnabledGuard optimize(symbreak::kJitOptimize);
      const double* h = domain->h;  // rows: (xprd,0,0), (xy,yprd,0), (xz,yz,zprd)
      double cell[9] = {h[0], 0.0, 0.0, h[5], h[1], 0.0, h[4], h[3], h[2]};
      // a row of zeros is a non-periodic direction (as the Python evaluator gives it; a
      // metatomic System's pbc); no edge has a shift along it
      for (int r = 0; r < 3; ++r)
        if (!domain->periodicity[r]) cell[3 * r] = cell[3 * r + 1] = cell[3 * r + 2] = 0.0;
      // The graph goes to the model's device once per call (on the CPU .to is a no-op: the
      // tensors stay views of the vectors); only the outputs read below come back.
      const auto device = model_->device;
      const auto on_device = [&](void* data, at::IntArrayRef shape, torch::TensorOptions options) {
        return torch::from_blob(data, shape, options).to(device);
      };
      auto out =
          model_->module
              .get_method("compute")(
                  {on_device(numbers_.data(), {n}, i64), on_device(positions_.data(), {n, 3}, f64),
                   on_device(cell, {1, 3, 3}, f64), torch::zeros({n}, i64.device(device)),
                   on_device(centers_.data(), {n_edges}, i64),
                   on_device(neighbors_.data(), {n_edges}, i64),
                   on_device(shifts_.data(), {n_edges, 3}, i64),
                   on_device(reverse_.data(), {n_edges}, i64),
                   torch::arange(n, i64.device(device)) < nlocal, policy_, counter, true,
                   static_cast<std::int64_t>(rotation_batch_)})
              .toGenericDict();
      const auto get = [&](const char* key) {
        return out.at(key).toTensor().detach().to(torch::kCPU, torch::kFloat64).contiguous();
      };
      energy = get("energy").item<double>();
      energy_rot = get("energy_per_rotation");
      atomic = get("atomic_energies");
      forces = get("forces");
      grad = get("edge_gradients");
      virial_t = get("virial");
      torque_t = get("torque");
      forces_std = get("forces_rot_std");
      rot_std = get("energy_rot_std");
    } catch (const std::exception& err) {
      error->one(FLERR, "pair_style symbreak: model evaluation failed: {}",
                 symbreak::script_error(err));
    }
    if (energy_rot.size(1) != n_rot)
      error->one(FLERR, "pair_style symbreak: internal error, {} rotations instead of {}",
                 energy_rot.size(1), n_rot);
  }
  const auto t_model = clock::now();

  // diagnostics: the spread of the per-rotation total energies over all ranks
  if (comm->nprocs == 1) {
    energy_rot_std_ = n > 0 ? rot_std.item<double>() : 0.0;
  } else {
    auto total = torch::zeros({1, n_rot}, f64);
    MPI_Allreduce(energy_rot.data_ptr<double>(), total.data_ptr<double>(), static_cast<int>(n_rot),
                  MPI_DOUBLE, MPI_SUM, world);
    energy_rot_std_ =
        model_->module.get_method("energy_spread")({total, weights}).toTensor().item<double>();
  }
  double torque_local[3] = {0.0, 0.0, 0.0};
  if (n > 0)
    for (int c = 0; c < 3; ++c) torque_local[c] = torque_t.data_ptr<double>()[c];
  MPI_Allreduce(torque_local, torque_, 3, MPI_DOUBLE, MPI_SUM, world);
  forces_rot_std_ = mode_ == Mode::Images ? (n > 0 ? forces_std.item<double>() : 0.0) : -1.0;
  // compute pair sums pvector over the ranks: the global values on rank 0 only
  const bool root = comm->me == 0;
  pvector[0] = root ? energy_rot_std_ : 0.0;
  pvector[1] = root ? n_rotations_ : 0.0;
  for (int c = 0; c < 3; ++c) pvector[2 + c] = root ? torque_[c] : 0.0;
  pvector[5] = root ? forces_rot_std_ : 0.0;

  if (n > 0) {
    if (eflag_global) eng_vdwl += energy;
    if (eflag_atom) {
      const double* a = atomic.data_ptr<double>();
      for (int i = 0; i < nlocal; ++i) eatom[i] += a[i];
    }
    // forces on every model atom (ghosts included: reverse communication sends them home)
    double** f = atom->f;
    const double* fm = forces.data_ptr<double>();
    for (int m = 0; m < n; ++m) {
      double* fi = f[lmp_of_[m]];
      for (int c = 0; c < 3; ++c) fi[c] += fm[3 * m + c];
    }
    if (vflag_global) {  // the file's [1, 3, 3] symmetric virial as xx yy zz xy xz yz
      const double* v = virial_t.data_ptr<double>();
      const double vv[6] = {v[0], v[4], v[8], v[1], v[2], v[5]};
      for (int c = 0; c < 6; ++c) virial[c] += vv[c];
    }
    if (vflag_atom) {  // each edge's symmetrised -r (x) g, half to each end
      const double* g = grad.data_ptr<double>();
      for (std::int64_t e = 0; e < n_edges; ++e) {
        const double* ge = g + 3 * e;
        const double* d = &vectors_[3 * e];
        const double v[6] = {-d[0] * ge[0],
                             -d[1] * ge[1],
                             -d[2] * ge[2],
                             -0.5 * (d[0] * ge[1] + d[1] * ge[0]),
                             -0.5 * (d[0] * ge[2] + d[2] * ge[0]),
                             -0.5 * (d[1] * ge[2] + d[2] * ge[1])};
        double* vi = vatom[lmp_of_[centers_[e]]];
        double* vj = vatom[neighbor_lmp_[e]];
        for (int c = 0; c < 6; ++c) {
          vi[c] += 0.5 * v[c];
          vj[c] += 0.5 * v[c];
        }
      }
    }
  }

  const auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  timing_[0] += seconds(t_start, t_graph);
  timing_[1] += seconds(t_graph, t_model);
  timing_[2] += seconds(t_model, clock::now());
  ++timing_calls_;
}
