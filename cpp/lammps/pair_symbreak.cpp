// pair_style symbreak: see pair_symbreak.h for the syntax.
//
// The model is a function of edge vectors r_ij = x_j - x_i only (symbreak/model.py), so
// LAMMPS's explicit ghost atoms fit it directly. Two ways to give it the atoms it needs:
//
//   images (default on one MPI rank): every ghost is a periodic image of an owned atom.
//     The model sees the owned atoms only; an edge to a ghost becomes an edge to the atom it
//     is an image of, labelled by its lattice shift. Exact, and costs the owned atoms only.
//   ghosts (default on several ranks): the model sees owned atoms and ghosts out to its
//     receptive field (n_layers x cutoff, plus the skin), with the ghosts' own neighbours.
//     Atoms more than n_layers edges away from every owned atom cannot change the owned
//     atoms' energies and are left out, as are edges between two atoms n_layers away.
//     Forces on ghosts go home by LAMMPS's reverse communication (newton pair on).
//
// Averaging: E = sum_k w_k E(R_k x) over the rotations of a policy (the same sets as
// symbreak.rotations.grid, from the table symbreak/data/rotation_grids.txt), computed as
// symbreak's PET.compute does it: the edge vectors of K rotated copies go through the
// model's `atomic_energies` in batches of `rotation_batch` copies, and one backward pass
// gives the gradient, back-rotated with R_k^T. Unlike PET.compute, only the owned atoms'
// energies are differentiated (PET.compute differentiates every atom it is given, which
// would add the ghosts' truncated energies).
//
// Virial: -sum_e r_e (x) dE/dr_e over all edges of all ranks, symmetrised (the model is not
// rotation invariant, so the tensor has an antisymmetric part, the torque; the stress is the
// derivative with respect to symmetric strain). f.r (virial_fdotr_compute) would keep one
// off-diagonal of the unsymmetrised tensor, so it is not used. Per-atom virial: each edge's
// symmetrised -r (x) g, half to each end.

// torch first: LAMMPS headers define macros (FLERR, NEIGHMASK, ...).
#include "pair_symbreak.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>
#include <sys/stat.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/script.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <stdexcept>
#include <tuple>

#include "atom.h"
#include "comm.h"
#include "domain.h"
#include "error.h"
#include "force.h"
#include "json.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"
#include "utils.h"

using namespace LAMMPS_NS;

namespace symbreak {

struct Model {
  torch::jit::Module module;
  std::string path;
  std::vector<int> species;  // atomic numbers
  double cutoff = 0.0;
  double receptive_field = 0.0;
  int n_layers = 1;
  std::string torch_version;
  torch::Dtype dtype = torch::kFloat32;
  // The file has learned_energies + prior_energies: the invariant priors are evaluated once
  // per call instead of once per rotation (older files: atomic_energies per rotation;
  // `symbreak export` brings them up to date).
  bool split_priors = false;
};

namespace {

const char* const kElements[] = {
    "X",  "H",  "He", "Li", "Be", "B",  "C",  "N",  "O",  "F",  "Ne", "Na", "Mg", "Al", "Si",
    "P",  "S",  "Cl", "Ar", "K",  "Ca", "Sc", "Ti", "V",  "Cr", "Mn", "Fe", "Co", "Ni", "Cu",
    "Zn", "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y",  "Zr", "Nb", "Mo", "Tc", "Ru",
    "Rh", "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I",  "Xe", "Cs", "Ba", "La", "Ce", "Pr",
    "Nd", "Pm", "Sm", "Eu", "Gd", "Tb", "Dy", "Ho", "Er", "Tm", "Yb", "Lu", "Hf", "Ta", "W",
    "Re", "Os", "Ir", "Pt", "Au", "Hg", "Tl", "Pb", "Bi", "Po", "At", "Rn", "Fr", "Ra", "Ac",
    "Th", "Pa", "U",  "Np", "Pu", "Am", "Cm", "Bk", "Cf", "Es", "Fm", "Md", "No", "Lr", "Rf",
    "Db", "Sg", "Bh", "Hs", "Mt", "Ds", "Rg", "Cn", "Nh", "Fl", "Mc", "Lv", "Ts", "Og"};
constexpr int kNumElements = sizeof(kElements) / sizeof(kElements[0]);

int atomic_number(const std::string& symbol) {
  for (int z = 1; z < kNumElements; ++z)
    if (symbol == kElements[z]) return z;
  return -1;
}

std::string element_symbol(int z) {
  return (z > 0 && z < kNumElements) ? kElements[z] : "Z=" + std::to_string(z);
}

bool is_file(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string dirname_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

// The installed package directory (symbreak/): this library lives in symbreak/lib/.
std::string package_dir() {
  Dl_info info;
  if (::dladdr(reinterpret_cast<void*>(&package_dir), &info) == 0 || !info.dli_fname)
    throw std::runtime_error("cannot locate the plugin file (dladdr failed)");
  char resolved[4096];
  const char* real = ::realpath(info.dli_fname, resolved);
  return dirname_of(dirname_of(real ? real : info.dli_fname));
}

std::vector<std::string> shipped_models() {
  std::vector<std::string> names;
  const std::string dir = package_dir() + "/models";
  for (const auto& file : platform::list_directory(dir))
    if (file.size() > 3 && file.compare(file.size() - 3, 3, ".pt") == 0)
      names.push_back(file.substr(0, file.size() - 3));
  std::sort(names.begin(), names.end());
  return names;
}

std::string resolve_model_path(const std::string& arg) {
  if (is_file(arg)) return arg;
  const std::string shipped = package_dir() + "/models/" + arg + ".pt";
  if (is_file(shipped)) return shipped;
  std::string list;
  for (const auto& name : shipped_models()) list += (list.empty() ? "" : ", ") + name;
  throw std::runtime_error("no model file '" + arg + "' and no shipped model of that name (" +
                           package_dir() + "/models has: " + (list.empty() ? "none" : list) + ")");
}

std::string file_key(const std::string& path) {
  struct stat st;
  char resolved[4096];
  const char* real = ::realpath(path.c_str(), resolved);
  std::string key = real ? real : path;
  if (::stat(path.c_str(), &st) == 0)
    key += "|" + std::to_string(st.st_size) + "|" + std::to_string(st.st_mtim.tv_sec) + "." +
           std::to_string(st.st_mtim.tv_nsec);
  return key;
}

// Loaded models, kept across pair style re-creation (a new pair_style command, a `clear`):
// switching the averaging never reloads the file. Keyed by real path, size, mtime and
// dtype, so an edited file is reloaded. Deliberately leaked (no exit-order issues).
std::map<std::string, std::shared_ptr<Model>>& model_cache() {
  static auto* cache = new std::map<std::string, std::shared_ptr<Model>>();
  return *cache;
}

std::shared_ptr<Model> load_model(const std::string& path, const std::string& dtype_request,
                                  bool& from_cache) {
  const std::string key = file_key(path) + "|" + dtype_request;
  auto& cache = model_cache();
  const auto found = cache.find(key);
  if (found != cache.end()) {
    from_cache = true;
    return found->second;
  }
  from_cache = false;

  auto model = std::make_shared<Model>();
  model->path = path;
  torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
  try {
    model->module = torch::jit::load(path, torch::kCPU, extra);
  } catch (const std::exception& err) {
    std::string what = err.what();
    what = what.substr(0, what.find('\n'));
    throw std::runtime_error("'" + path + "' is not a readable symbreak model file: " + what);
  }
  if (extra["metadata.json"].empty())
    throw std::runtime_error("'" + path + "' has no metadata.json: not a symbreak model file");
  try {
    const auto meta = json::parse(extra["metadata.json"]);
    model->species = meta.at("species").get<std::vector<int>>();
    model->cutoff = meta.at("cutoff").get<double>();
    model->receptive_field = meta.at("receptive_field").get<double>();
    model->torch_version = meta.at("torch_version").get<std::string>();
  } catch (const std::exception& err) {
    throw std::runtime_error("'" + path + "': corrupt metadata.json: " + err.what());
  }
  if (model->cutoff <= 0.0 || model->receptive_field < model->cutoff || model->species.empty())
    throw std::runtime_error("'" + path + "': corrupt metadata.json (cutoff " +
                             std::to_string(model->cutoff) + ", receptive field " +
                             std::to_string(model->receptive_field) + ")");
  model->n_layers = static_cast<int>(std::lround(model->receptive_field / model->cutoff));

  // TorchScript files are only supported by the torch major.minor that wrote them.
  int major = -1, minor = -1;
  std::sscanf(model->torch_version.c_str(), "%d.%d", &major, &minor);
  if (major != TORCH_VERSION_MAJOR || minor != TORCH_VERSION_MINOR)
    throw std::runtime_error("'" + path + "' was exported with torch " + model->torch_version +
                             ", but this plugin runs torch " + TORCH_VERSION +
                             "; TorchScript files are only supported by the torch version that "
                             "wrote them: re-export the model with torch " +
                             std::to_string(TORCH_VERSION_MAJOR) + "." +
                             std::to_string(TORCH_VERSION_MINOR));
  for (const char* method : {"atomic_energies", "baseline_energies"})
    if (!model->module.find_method(method))
      throw std::runtime_error("'" + path + "' has no method '" + method +
                               "': not a symbreak model file");

  model->split_priors = model->module.find_method("learned_energies").has_value() &&
                        model->module.find_method("prior_energies").has_value();
  model->module.eval();
  for (const auto& p : model->module.parameters()) {
    model->dtype = p.scalar_type();
    break;
  }
  if (dtype_request == "float64" && model->dtype != torch::kFloat64) {
    model->module.to(torch::kFloat64);
    model->dtype = torch::kFloat64;
  } else if (dtype_request == "float32" && model->dtype != torch::kFloat32) {
    throw std::runtime_error("'" + path +
                             "' is a float64 model: dtype float32 is not supported "
                             "for it (export it in float32)");
  }
  // Forces need gradients with respect to the edge vectors only; with trainable weights
  // TorchScript's backward would also compute every weight gradient (~1.45x the time).
  for (auto p : model->module.parameters()) p.requires_grad_(false);
  // Other entries of the same file (an older version of it) are dropped.
  const std::string real = file_key(path).substr(0, file_key(path).find('|'));
  for (auto it = cache.begin(); it != cache.end();)
    it = (it->first.compare(0, real.size() + 1, real + "|") == 0) ? cache.erase(it) : ++it;
  cache[key] = model;
  return model;
}

// The rotation table (symbreak/data/rotation_grids.txt): (family, L) -> K x [w, R00..R22].
using GridTable = std::map<std::pair<std::string, int>, std::vector<double>>;

const GridTable& grid_table() {
  static GridTable* table = nullptr;
  if (table) return *table;
  const std::string path = package_dir() + "/data/rotation_grids.txt";
  std::ifstream in(path);
  if (!in)
    throw std::runtime_error("rotation table " + path +
                             " not found: the plugin must stay in "
                             "the lib/ folder of the installed symbreak package");
  auto parsed = std::make_unique<GridTable>();
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream head(line);
    std::string tag, family;
    int order = 0, count = 0;
    if (!(head >> tag >> family >> order >> count) || tag != "grid" || count <= 0)
      throw std::runtime_error("corrupt rotation table " + path + ": '" + line + "'");
    std::vector<double> rows(10 * static_cast<size_t>(count));
    for (int k = 0; k < count; ++k) {
      if (!std::getline(in, line)) throw std::runtime_error("truncated rotation table " + path);
      const char* p = line.c_str();
      for (int c = 0; c < 10; ++c) {
        char* end = nullptr;
        rows[10 * k + c] = std::strtod(p, &end);  // exact: the table holds round-trip reprs
        if (end == p) throw std::runtime_error("corrupt rotation table " + path + ": " + line);
        p = end;
      }
    }
    (*parsed)[{family, order}] = std::move(rows);
  }
  table = parsed.release();
  return *table;
}

std::string table_orders(const std::string& family) {
  std::string out;
  for (const auto& entry : grid_table())
    if (entry.first.first == family)
      out += (out.empty() ? "" : " ") + std::to_string(entry.first.second);
  return out;
}

// As symbreak.evaluator: with an automatic rotation batch, rotated copies x edges per model call
// stays below AUTO_EDGE_BUDGET (memory: ~45 kB per rotated edge for the default-size PET;
// larger batches leave the cache and are slower on CPU), and TorchScript's optimising executor is
// off (JIT_OPTIMIZE: it made the default-size PET slower and hungrier on CPU).
constexpr long kAutoEdgeBudget = 8192;
constexpr bool kJitOptimize = false;

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
  // compute pair symbreak: c_ID[1] = spread of the per-rotation energies (eV), c_ID[2] = K.
  nextra = 2;
  pvector = new double[nextra];
  pvector[0] = pvector[1] = 0.0;
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
  type_species_.assign(n, -1);
}

/* ---------------------------------------------------------------------- */

void PairSymbreak::settings(int narg, char** arg) {
  if (narg < 1)
    error->all(FLERR, "pair_style symbreak: missing model (a model file or a shipped model name)");

  Average average = Average::None;
  int order = 1;
  bool inversion = false;
  std::uint64_t seed = 12345;
  int rotation_batch = 0;
  std::string dtype = "auto";
  Mode mode = Mode::Auto;
  for (int i = 1; i < narg; i += 2) {
    const std::string key = arg[i];
    if (i + 1 >= narg) error->all(FLERR, "pair_style symbreak: keyword '{}' needs a value", key);
    const std::string value = arg[i + 1];
    if (key == "average") {
      if (value == "none") {
        average = Average::None;
      } else if (value == "random") {
        average = Average::Random;
      } else if (value == "legendre" || value == "lebedev") {
        average = value == "legendre" ? Average::Legendre : Average::Lebedev;
        if (i + 2 >= narg)
          error->all(FLERR, "pair_style symbreak: 'average {}' needs an order L", value);
        order = utils::inumeric(FLERR, arg[i + 2], false, lmp);
        ++i;
      } else {
        error->all(FLERR,
                   "pair_style symbreak: unknown average '{}' (valid: none, random, legendre L, "
                   "lebedev L)",
                   value);
      }
    } else if (key == "inversion") {
      inversion = utils::logical(FLERR, value, false, lmp) == 1;
    } else if (key == "seed") {
      seed = static_cast<std::uint64_t>(utils::bnumeric(FLERR, value, false, lmp));
    } else if (key == "rotation_batch") {
      rotation_batch = utils::inumeric(FLERR, value, false, lmp);
      if (rotation_batch < 0) error->all(FLERR, "pair_style symbreak: rotation_batch must be >= 0");
    } else if (key == "dtype") {
      if (value != "float32" && value != "float64")
        error->all(FLERR, "pair_style symbreak: dtype must be float32 or float64, not '{}'", value);
      dtype = value;
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
                 "rotation_batch, dtype, mode)",
                 key);
    }
  }

  std::shared_ptr<symbreak::Model> model;
  bool from_cache = false;
  try {
    model = symbreak::load_model(symbreak::resolve_model_path(arg[0]), dtype, from_cache);
  } catch (const std::exception& err) {
    error->all(FLERR, "pair_style symbreak: {}", err.what());
  }
  // Another model (or dtype): the type -> species map must be given again.
  if (model_ && model_ != model && allocated) {
    for (int i = 0; i <= atom->ntypes; ++i)
      for (int j = 0; j <= atom->ntypes; ++j) setflag[i][j] = 0;
  }
  model_ = model;
  model_arg_ = arg[0];
  average_ = average;
  order_ = order;
  inversion_ = inversion;
  seed_ = seed;
  rotation_batch_ = rotation_batch;
  mode_request_ = mode;
  rng_.seed(seed_);
  try {
    set_grid();
  } catch (const std::exception& err) {
    error->all(FLERR, "pair_style symbreak: {}", err.what());
  }

  if (comm->me == 0) {
    std::string species;
    for (int z : model_->species)
      species += (species.empty() ? "" : " ") + symbreak::element_symbol(z);
    utils::logmesg(lmp,
                   "pair_style symbreak: {} model {} ({}, species {}, cutoff {} A, receptive "
                   "field {} A)\npair_style symbreak: average {} ({} rotations per step)\n",
                   from_cache ? "cached" : "loaded", model_->path,
                   model_->dtype == torch::kFloat64 ? "float64" : "float32", species,
                   model_->cutoff, model_->receptive_field, policy_string(), rot_.size() / 9);
    if (!model_->split_priors)
      utils::logmesg(lmp,
                     "pair_style symbreak: the file has no learned_energies/prior_energies: the "
                     "invariant priors are evaluated once per rotation (`symbreak export` "
                     "brings the file up to date)\n");
  }
}

std::string PairSymbreak::policy_string() const {
  std::string out;
  switch (average_) {
    case Average::None:
      out = "none";
      break;
    case Average::Random:
      out = "random seed " + std::to_string(seed_);
      break;
    case Average::Legendre:
      out = "legendre " + std::to_string(order_);
      break;
    case Average::Lebedev:
      out = "lebedev " + std::to_string(order_);
      break;
  }
  return out + (inversion_ ? " inversion yes" : "");
}

void PairSymbreak::set_grid() {
  std::vector<double> rows;
  if (average_ == Average::None) {
    rows = {1.0, 1, 0, 0, 0, 1, 0, 0, 0, 1};
  } else if (average_ == Average::Random) {
    draw_random_rotation();
    return;
  } else {
    const std::string family = average_ == Average::Legendre ? "legendre" : "lebedev";
    const auto& table = symbreak::grid_table();
    const auto found = table.find({family, order_});
    if (found == table.end())
      throw std::runtime_error(
          "no " + family + " grid of order " + std::to_string(order_) +
          " in the rotation table (available: " + symbreak::table_orders(family) + ")");
    rows = found->second;
  }
  const size_t count = rows.size() / 10;
  rot_.clear();
  weights_.clear();
  // As symbreak.rotations.grid: with inversion R0, -R0, R1, -R1, ... and weights halved.
  for (size_t k = 0; k < count; ++k) {
    for (int sign : {1, -1}) {
      if (sign < 0 && !inversion_) break;
      for (int c = 0; c < 9; ++c) rot_.push_back(sign * rows[10 * k + 1 + c]);
      weights_.push_back(inversion_ ? 0.5 * rows[10 * k] : rows[10 * k]);
    }
  }
  n_rotations_ = static_cast<double>(weights_.size());
}

// A uniform random O(3) rotation, as symbreak.rotations.random_rotation: a normalised Gaussian
// quaternion, improper with probability 1/2; with inversion the pair [R, -R], weights 1/2.
// Every rank draws the same sequence (same seed, one draw per force call).
void PairSymbreak::draw_random_rotation() {
  std::normal_distribution<double> gauss(0.0, 1.0);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  double q[4], norm = 0.0;
  for (double& v : q) {
    v = gauss(rng_);
    norm += v * v;
  }
  norm = std::sqrt(norm);
  const double a = q[0] / norm, b = q[1] / norm, c = q[2] / norm, d = q[3] / norm;
  const double sign = uniform(rng_) < 0.5 ? -1.0 : 1.0;
  const double R[9] = {1 - 2 * (c * c + d * d), 2 * (b * c - a * d),     2 * (b * d + a * c),
                       2 * (b * c + a * d),     1 - 2 * (b * b + d * d), 2 * (c * d - a * b),
                       2 * (b * d - a * c),     2 * (c * d + a * b),     1 - 2 * (b * b + c * c)};
  rot_.clear();
  weights_.clear();
  for (double s : {1.0, -1.0}) {
    if (s < 0 && !inversion_) break;
    for (double v : R) rot_.push_back(s * sign * v);
    weights_.push_back(inversion_ ? 0.5 : 1.0);
  }
  n_rotations_ = static_cast<double>(weights_.size());
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
    type_species_[t] = static_cast<int>(it - model_->species.begin());
  }
  for (int i = 1; i <= ntypes; ++i)
    for (int j = i; j <= ntypes; ++j) setflag[i][j] = setflag[j][i] = 1;
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
  if (std::strcmp(name, "cutoff") == 0 && model_) return &model_->cutoff;
  return nullptr;
}

double PairSymbreak::memory_usage() {
  double bytes = Pair::memory_usage();
  bytes += static_cast<double>(centers_.capacity() + neighbors_.capacity() + reverse_.capacity()) *
           sizeof(std::int64_t);
  bytes += static_cast<double>(vectors_.capacity()) * sizeof(double);
  return bytes;
}

/* ----------------------------------------------------------------------
   graphs
------------------------------------------------------------------------- */

// One rank: model atoms = owned atoms; an edge to a ghost goes to the owned atom it is an
// image of (found by its tag), labelled by its lattice shift.
void PairSymbreak::build_graph_images() {
  const int nlocal = atom->nlocal;
  double** x = atom->x;
  const tagint* tag = atom->tag;
  const int* type = atom->type;
  const double rc2 = model_->cutoff * model_->cutoff;
  const double* hi = domain->h_inv;

  tagint max_tag = 0;
  for (int i = 0; i < nlocal; ++i) max_tag = std::max(max_tag, tag[i]);
  tag_owner_.assign(static_cast<size_t>(max_tag) + 1, -1);
  for (int i = 0; i < nlocal; ++i) tag_owner_[tag[i]] = i;

  n_model_ = nlocal;
  lmp_of_.resize(nlocal);
  species_.resize(nlocal);
  for (int i = 0; i < nlocal; ++i) {
    lmp_of_[i] = i;
    species_[i] = type_species_[type[i]];
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
      const double d[3] = {x[j][0] - x[i][0], x[j][1] - x[i][1], x[j][2] - x[i][2]};
      if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= rc2) continue;
      int owner = j;
      int s[3] = {0, 0, 0};
      if (j >= nlocal) {
        owner = tag[j] <= max_tag ? tag_owner_[tag[j]] : -1;
        if (owner < 0)
          error->one(FLERR,
                     "pair_style symbreak: ghost atom {} is not an image of an owned atom "
                     "(use mode ghosts)",
                     tag[j]);
        const double e[3] = {x[j][0] - x[owner][0], x[j][1] - x[owner][1], x[j][2] - x[owner][2]};
        s[0] = static_cast<int>(std::lround(hi[0] * e[0] + hi[5] * e[1] + hi[4] * e[2]));
        s[1] = static_cast<int>(std::lround(hi[1] * e[1] + hi[3] * e[2]));
        s[2] = static_cast<int>(std::lround(hi[2] * e[2]));
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
// first), with every edge of the atoms within n_layers - 1 edges and its reverse.
void PairSymbreak::build_graph_ghosts() {
  const int nlocal = atom->nlocal;
  const int nall = nlocal + atom->nghost;
  double** x = atom->x;
  const int* type = atom->type;
  const double rc2 = model_->cutoff * model_->cutoff;
  const int layers = model_->n_layers;
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
  // Model atoms are processed in order; those with hop < layers get all their edges.
  for (size_t m = 0; m < lmp_of_.size(); ++m) {
    const int a = lmp_of_[m];
    row_begin_.push_back(static_cast<std::int64_t>(centers_.size()));
    if (hop_[a] < layers) {
      const int* jlist = list->firstneigh[a];
      for (int jj = 0; jj < list->numneigh[a]; ++jj) {
        const int j = jlist[jj] & NEIGHMASK;
        const double d[3] = {x[j][0] - x[a][0], x[j][1] - x[a][1], x[j][2] - x[a][2]};
        if (d[0] * d[0] + d[1] * d[1] + d[2] * d[2] >= rc2) continue;
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
  species_.resize(n_model_);
  for (int m = 0; m < n_model_; ++m) species_[m] = type_species_[type[lmp_of_[m]]];

  // Atoms at n_layers hops have no rows: give them the reverses of the edges that reach them
  // (-d is exactly x_a - x_j). Their own outputs never reach an owned atom's energy.
  const size_t n_row_edges = centers_.size();
  reverse_.assign(n_row_edges, -1);
  for (size_t e = 0; e < n_row_edges; ++e) {
    if (hop_[neighbor_lmp_[e]] < layers) continue;
    reverse_[e] = static_cast<std::int64_t>(centers_.size());
    reverse_.push_back(static_cast<std::int64_t>(e));
    centers_.push_back(neighbors_[e]);
    neighbors_.push_back(centers_[e]);
    neighbor_lmp_.push_back(lmp_of_[centers_[e]]);
    for (int c = 0; c < 3; ++c) vectors_.push_back(-vectors_[3 * e + c]);
  }
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
  if (images) compact(shifts_, 3);
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
  if (average_ == Average::Random) draw_random_rotation();  // same draw on every rank

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
  const std::int64_t n_rot = static_cast<std::int64_t>(weights_.size());
  std::vector<double> energy_rot(n_rot, 0.0);  // this rank's owned atoms, per rotation
  std::vector<double> atomic(nlocal, 0.0);
  torch::Tensor grad;

  if (n > 0) {
    try {
      const auto dtype = model_->dtype;
      const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
      const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
      torch::AutoGradMode grad_mode(true);
      torch::jit::GraphOptimizerEnabledGuard optimize(symbreak::kJitOptimize);
      auto species = torch::from_blob(species_.data(), {n}, i64);
      auto centers = torch::from_blob(centers_.data(), {n_edges}, i64);
      auto neighbors = torch::from_blob(neighbors_.data(), {n_edges}, i64);
      auto reverse = torch::from_blob(reverse_.data(), {n_edges}, i64);
      auto base = torch::from_blob(vectors_.data(), {n_edges, 3}, f64).to(dtype);
      auto rotations = torch::from_blob(rot_.data(), {n_rot, 3, 3}, f64).to(dtype);
      auto weights = torch::from_blob(weights_.data(), {n_rot}, f64);

      auto baseline = model_->module.get_method("baseline_energies")({species}).toTensor();
      auto baseline_local = baseline.narrow(0, 0, nlocal).to(torch::kFloat64);
      const double baseline_sum = baseline_local.sum().item<double>();
      auto atomic_t = baseline_local.clone();
      grad = torch::zeros({n_edges, 3}, torch::TensorOptions().dtype(dtype));

      std::int64_t chunk = rotation_batch_ > 0
                               ? rotation_batch_
                               : std::max<std::int64_t>(1, symbreak::kAutoEdgeBudget /
                                                               std::max<std::int64_t>(n_edges, 1));
      chunk = std::min(chunk, n_rot);
      // The invariant priors are the same for every rotated copy: once, on the unrotated
      // vectors, weighted by the sum of the weights.
      double prior_sum = 0.0;
      if (model_->split_priors) {
        double w_total = 0.0;
        for (const double wk : weights_) w_total += wk;
        auto leaf = base.clone().requires_grad_(true);
        auto prior =
            model_->module.get_method("prior_energies")({species, centers, neighbors, leaf})
                .toTensor();
        auto prior_local = prior.narrow(0, 0, nlocal).to(torch::kFloat64);
        prior_sum = prior_local.sum().item<double>();
        atomic_t += w_total * prior_local.detach();
        if (prior_local.requires_grad()) {  // no graph: a model without priors
          auto g = torch::autograd::grad({prior_local.sum()}, {leaf}, {}, false, false, true)[0];
          if (g.defined()) grad += w_total * g;
        }
      }
      auto method =
          model_->module.get_method(model_->split_priors ? "learned_energies" : "atomic_energies");
      for (std::int64_t start = 0; start < n_rot; start += chunk) {
        const std::int64_t k = std::min(chunk, n_rot - start);
        auto rot = rotations.narrow(0, start, k);
        auto w = weights.narrow(0, start, k);
        // The rotated copies are the autograd leaf: one backward pass gives every rotation's
        // own gradient (each E_k depends on its copy only).
        auto rotated = at::einsum("kab,eb->kea", {rot, base}).contiguous();
        rotated.requires_grad_(true);
        auto offsets = torch::arange(k, i64).unsqueeze(1);
        auto eps = method({species.repeat({k}), (centers.unsqueeze(0) + offsets * n).reshape(-1),
                           (neighbors.unsqueeze(0) + offsets * n).reshape(-1),
                           rotated.reshape({k * n_edges, 3}),
                           (reverse.unsqueeze(0) + offsets * n_edges).reshape(-1)})
                       .toTensor()
                       .view({k, n});
        auto eps_local = eps.narrow(1, 0, nlocal).to(torch::kFloat64);
        auto e_k = eps_local.sum(1);
        const auto e_k_host = e_k.detach().contiguous();
        const double* e_k_ptr = e_k_host.data_ptr<double>();
        for (std::int64_t r = 0; r < k; ++r)
          energy_rot[start + r] = e_k_ptr[r] + baseline_sum + prior_sum;
        atomic_t += (w.unsqueeze(1) * eps_local.detach()).sum(0);
        auto total = (w * e_k).sum();
        auto g = torch::autograd::grad({total}, {rotated}, {}, false, false, true)[0];
        if (g.defined()) grad += at::einsum("kab,kea->keb", {rot, g}).sum(0);  // R_k^T g_k
      }
      grad = grad.to(torch::kFloat64).contiguous();
      auto atomic_acc = atomic_t.contiguous();
      std::memcpy(atomic.data(), atomic_acc.data_ptr<double>(), nlocal * sizeof(double));
    } catch (const std::exception& err) {
      std::string what = err.what();
      error->one(FLERR, "pair_style symbreak: model evaluation failed: {}",
                 what.substr(0, what.find("\nException raised from")));
    }
  } else {
    grad = torch::zeros({0, 3}, torch::TensorOptions().dtype(torch::kFloat64));
  }

  const auto t_model = clock::now();
  double energy_local = 0.0;
  for (std::int64_t k = 0; k < n_rot; ++k) energy_local += weights_[k] * energy_rot[k];

  if (eflag_global) {
    eng_vdwl += energy_local;
    // Spread of the per-rotation total energies (all ranks), for compute pair / extract.
    std::vector<double> total(n_rot, 0.0);
    MPI_Allreduce(energy_rot.data(), total.data(), static_cast<int>(n_rot), MPI_DOUBLE, MPI_SUM,
                  world);
    double mean = 0.0, var = 0.0;
    for (std::int64_t k = 0; k < n_rot; ++k) mean += weights_[k] * total[k];
    for (std::int64_t k = 0; k < n_rot; ++k)
      var += weights_[k] * (total[k] - mean) * (total[k] - mean);
    energy_rot_std_ = std::sqrt(std::max(var, 0.0));
    pvector[0] = comm->me == 0 ? energy_rot_std_ : 0.0;  // compute pair sums over ranks
    pvector[1] = comm->me == 0 ? n_rotations_ : 0.0;
  }
  if (eflag_atom)
    for (int i = 0; i < nlocal; ++i) eatom[i] += atomic[i];

  // forces: E depends on r_e = x_j - x_i, so f_i += dE/dr_e, f_j -= dE/dr_e
  double** f = atom->f;
  const double* g = grad.data_ptr<double>();
  double w[6] = {0, 0, 0, 0, 0, 0};
  for (std::int64_t e = 0; e < n_edges; ++e) {
    const int i = lmp_of_[centers_[e]];
    const int j = neighbor_lmp_[e];
    const double* ge = g + 3 * e;
    const double* d = &vectors_[3 * e];
    for (int c = 0; c < 3; ++c) {
      f[i][c] += ge[c];
      f[j][c] -= ge[c];
    }
    if (vflag_either) {
      const double v[6] = {-d[0] * ge[0],
                           -d[1] * ge[1],
                           -d[2] * ge[2],
                           -0.5 * (d[0] * ge[1] + d[1] * ge[0]),
                           -0.5 * (d[0] * ge[2] + d[2] * ge[0]),
                           -0.5 * (d[1] * ge[2] + d[2] * ge[1])};
      for (int c = 0; c < 6; ++c) w[c] += v[c];
      if (vflag_atom)
        for (int c = 0; c < 6; ++c) {
          vatom[i][c] += 0.5 * v[c];
          vatom[j][c] += 0.5 * v[c];
        }
    }
  }
  if (vflag_global)
    for (int c = 0; c < 6; ++c) virial[c] += w[c];

  const auto seconds = [](auto a, auto b) { return std::chrono::duration<double>(b - a).count(); };
  timing_[0] += seconds(t_start, t_graph);
  timing_[1] += seconds(t_graph, t_model);
  timing_[2] += seconds(t_model, clock::now());
  ++timing_calls_;
}
