// See model_file.h.

// torch first: LAMMPS headers define macros (FLERR, NEIGHMASK, ...).
#include "model_file.h"

#include <caffe2/serialize/inline_container.h>
#include <dlfcn.h>
#include <link.h>
#include <malloc.h>
#include <sys/stat.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <set>
#include <stdexcept>
#include <vector>

#ifdef SYMBREAK_HAVE_METATOMIC
#include <metatensor/torch/misc.hpp>
#include <metatomic/torch.hpp>
#endif

#include "json.h"
#include "platform.h"

namespace symbreak {

namespace {

//! Extra files every metatomic AtomisticModel.save writes (symbreak.metatomic.METATOMIC_MARKERS).
const char* const kMetatomicMarkers[] = {"metatomic-version", "extensions"};
constexpr const char* kSymbreakMetadata = "metadata.json";

//! Names of the extra files of a TorchScript archive (empty if it is not one).
std::set<std::string> extra_files(const std::string& path) {
  std::set<std::string> names;
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    for (const auto& record : reader.getAllRecords())
      if (record.rfind("extra/", 0) == 0) names.insert(record.substr(6));
  } catch (const std::exception&) {
    names.clear();  // not an archive: torch::jit::load gives the error
  }
  return names;
}

struct Extension {
  std::string name, path;
};

std::vector<Extension> extensions_of(const std::string& path) {
  std::vector<Extension> out;
  try {
    const auto entries = LAMMPS_NS::json::parse(read_extra_file(path, "extensions"));
    for (const auto& entry : entries)
      if (entry.is_object() && entry.contains("name"))
        out.push_back({entry.at("name").get<std::string>(),
                       entry.contains("path") ? entry.at("path").get<std::string>() : ""});
  } catch (const std::exception&) {
    // no or unreadable list: nothing to check (metatomic reads the same file)
  }
  return out;
}

std::string basename_of(const std::string& path) {
  const auto slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

//! File names of the shared objects loaded in this process.
std::set<std::string> loaded_objects() {
  std::set<std::string> names;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* data) {
        if (info->dlpi_name && info->dlpi_name[0])
          static_cast<std::set<std::string>*>(data)->insert(basename_of(info->dlpi_name));
        return 0;
      },
      &names);
  return names;
}

std::string join_names(const std::vector<Extension>& extensions) {
  std::string out;
  for (const auto& e : extensions) out += (out.empty() ? "" : ", ") + e.name;
  return out.empty() ? "(unnamed)" : out;
}

}  // namespace

FileKind classify_model_file(const std::string& path) {
  const auto names = extra_files(path);
  bool metatomic = true;
  for (const char* marker : kMetatomicMarkers) metatomic = metatomic && names.count(marker) > 0;
  const bool symbreak = names.count(kSymbreakMetadata) > 0;
  if (symbreak && names.count("metatomic-version") > 0) return FileKind::WrappedMetatomic;
  if (metatomic && !symbreak) return FileKind::RawMetatomic;
  return FileKind::Symbreak;
}

std::string read_extra_file(const std::string& path, const std::string& name) {
  try {
    caffe2::serialize::PyTorchStreamReader reader(path);
    const std::string record = "extra/" + name;
    if (!reader.hasRecord(record)) return "";
    auto [data, size] = reader.getRecord(record);
    return std::string(static_cast<const char*>(data.get()), size);
  } catch (const std::exception&) {
    return "";
  }
}

bool metatomic_linked() {
#ifdef SYMBREAK_HAVE_METATOMIC
  return true;
#else
  return false;
#endif
}

std::string metatomic_versions() {
#ifdef SYMBREAK_HAVE_METATOMIC
  return "metatomic-torch " + metatomic_torch::version() + ", metatensor-torch " +
         metatensor_torch::version();
#else
  return "built without metatomic";
#endif
}

void prepare_metatomic(const std::string& path, const std::string& extensions_directory,
                       const std::string& recorded_directory) {
#ifndef SYMBREAK_HAVE_METATOMIC
  (void)extensions_directory;
  (void)recorded_directory;
  throw std::runtime_error(
      "'" + path +
      "' holds a metatomic model, but this plugin was built without metatomic "
      "(metatomic-torch was not importable when symbreak was built): pip install "
      "metatomic-torch, then reinstall symbreak (pip install --no-build-isolation .)");
#else
  const auto extensions = extensions_of(path);
  const std::string where =
      extensions_directory.empty()
          ? "installed (give their folder with the pair_style keyword extensions DIR" +
                (recorded_directory.empty()
                     ? std::string(")")
                     : "; the file was exported with --extensions " + recorded_directory + ")")
          : "in the extensions directory '" + extensions_directory + "'";
  try {
    metatomic_torch::load_model_extensions(
        path, extensions_directory.empty() ? c10::optional<std::string>()
                                           : c10::optional<std::string>(extensions_directory));
  } catch (const std::exception& err) {
    std::string what = err.what();
    what = what.substr(0, what.find('\n'));
    throw std::runtime_error("'" + path + "': the metatomic model's TorchScript extension(s) " +
                             join_names(extensions) + " could not be loaded: not " + where + ". " +
                             what);
  }
  // metatomic only warns about an extension it cannot find; the model would fail later
  // with a TorchScript error about an unknown class: refuse it here, by name.
  const auto loaded = loaded_objects();
  std::vector<Extension> missing;
  for (const auto& e : extensions) {
    const std::string file = basename_of(e.path);
    bool found = !file.empty() && loaded.count(file) > 0;
    for (const auto& object : loaded) found = found || object.rfind("lib" + e.name + ".", 0) == 0;
    if (!found) missing.push_back(e);
  }
  if (!missing.empty())
    throw std::runtime_error("'" + path + "': the metatomic model needs the TorchScript " +
                             "extension(s) " + join_names(missing) +
                             ", which could not be loaded: not " + where);
#endif
}

/* ----------------------------------------------------------------------
   loading a model file
------------------------------------------------------------------------- */

namespace {

//! Version of the model file's entry points this plugin calls (symbreak.contract).
constexpr int kContractVersion = 2;

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
  for (const auto& file : LAMMPS_NS::platform::list_directory(dir))
    if (file.size() > 3 && file.compare(file.size() - 3, 3, ".pt") == 0)
      names.push_back(file.substr(0, file.size() - 3));
  std::sort(names.begin(), names.end());
  return names;
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

std::string join(const std::vector<int>& values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}

// Loaded models, kept across pair style re-creation (a new pair_style command, a `clear`):
// switching the averaging never reloads the file. Keyed by real path, size, mtime, dtype
// and device, so an edited file is reloaded. Deliberately leaked (no exit-order issues).
std::map<std::string, std::shared_ptr<Model>>& model_cache() {
  static auto* cache = new std::map<std::string, std::shared_ptr<Model>>();
  return *cache;
}

// As symbreak.allocator.keep_freed_memory: glibc keeps freed memory instead of trimming it and
// mapping fresh pages, so force calls stop faulting their activations in (once per process;
// SYMBREAK_KEEP_FREED_MEMORY=0 leaves the defaults).
void keep_freed_memory() {
  static const bool done = [] {
    const char* env = std::getenv("SYMBREAK_KEEP_FREED_MEMORY");
    if (env && std::string(env) == "0") return false;
    return mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1 &&
           mallopt(M_TOP_PAD, 512 * 1024 * 1024) == 1 && mallopt(M_TRIM_THRESHOLD, 2147483647) == 1;
  }();
  (void)done;
}

std::string reexport_hint(const std::string& path) {
  return "write it again with this symbreak: `symbreak export " + path + " --output NEW.pt`";
}

// A raw metatomic file served through the wrapper template that the build writes next to
// this plugin (symbreak/lib/metatomic_template.pt, symbreak.metatomic.template): the same
// scripted wrapper as Python's, whose `model` attribute has an interface type. The loaded
// AtomisticModel becomes its model, and configure("energy") reads the species, cutoffs,
// neighbour lists and precision from the model, as the Python wrapper does at construction.
// Its extensions are loaded first (prepare_metatomic). `name` gets the model's name.
torch::jit::Module wrap_raw_metatomic(const std::string& path,
                                      const std::string& extensions_directory, std::string& name) {
#ifndef SYMBREAK_HAVE_METATOMIC
  (void)extensions_directory;
  (void)name;
  throw std::runtime_error("'" + path + "' holds a metatomic model: " + metatomic_versions());
#else
  const std::string wrapper_file = package_dir() + "/lib/metatomic_template.pt";
  if (!is_file(wrapper_file))
    throw std::runtime_error(
        "'" + path + "' is a metatomic model, but the wrapper template " + wrapper_file +
        " is missing (the build writes it when metatomic-torch, ase and scipy are importable): "
        "reinstall symbreak with `bash scripts/setup.sh`, or wrap the model once with "
        "`symbreak export " +
        path + " --output W.pt` and load W.pt");
  torch::jit::Module inner;
  try {
    inner = metatomic_torch::load_atomistic_model(
        path, extensions_directory.empty() ? c10::optional<std::string>()
                                           : c10::optional<std::string>(extensions_directory));
  } catch (const std::exception& err) {
    throw std::runtime_error("'" + path +
                             "' is not a loadable metatomic model: " + script_error(err));
  }
  torch::jit::Module wrapper;
  try {
    wrapper = torch::jit::load(wrapper_file, torch::kCPU);
  } catch (const std::exception& err) {
    throw std::runtime_error("the metatomic wrapper template " + wrapper_file + " is unreadable (" +
                             script_error(err) + "): reinstall symbreak");
  }
  try {
    // the interface type's check: the model has the entry points the wrapper calls
    wrapper.setattr("model", inner._ivalue());
  } catch (const std::exception& err) {
    throw std::runtime_error("'" + path + "': the metatomic model lacks an entry point symbreak " +
                             "calls (forward, capabilities, requested_neighbor_lists, " +
                             "requested_inputs): " + script_error(err));
  }
  try {
    wrapper.run_method("configure", std::string("energy"));
  } catch (const std::exception& err) {
    throw std::runtime_error("'" + path + "': " + script_error(err));
  }
  try {
    name = inner.run_method("metadata").toCustomClass<metatomic_torch::ModelMetadataHolder>()->name;
  } catch (const std::exception&) {
    name.clear();  // the name is only shown in the log
  }
  return wrapper;
#endif
}

}  // namespace

int atomic_number(const std::string& symbol) {
  for (int z = 1; z < kNumElements; ++z)
    if (symbol == kElements[z]) return z;
  return -1;
}

std::string element_symbol(int z) {
  return (z > 0 && z < kNumElements) ? kElements[z] : "Z=" + std::to_string(z);
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

std::string script_error(const std::exception& err) {
  std::string what = err.what();
  what = what.substr(0, what.find("\nException raised from"));  // C++ frames of c10::Error
  const bool traceback =
      what.rfind("The following operation failed in the TorchScript interpreter", 0) == 0;
  if (!traceback) return what.substr(0, what.find('\n'));
  // the traceback ends with "builtins.ValueError: MESSAGE" or "RuntimeError: MESSAGE": the
  // last line that starts with the name of an exception
  std::string found;
  size_t end = what.size();
  while (end > 0 && found.empty()) {
    const size_t start = what.rfind('\n', end - 1);
    const size_t begin = start == std::string::npos ? 0 : start + 1;
    const std::string line = what.substr(begin, end - begin);
    const auto colon = line.find(": ");
    const std::string kind = colon == std::string::npos ? "" : line.substr(0, colon);
    if (!kind.empty() && kind.find(' ') == std::string::npos &&
        (kind.size() > 5 && (kind.compare(kind.size() - 5, 5, "Error") == 0 ||
                             kind.find("Exception") != std::string::npos))) {
      const std::string name = kind.substr(kind.find_last_of('.') + 1);
      found = name == "ValueError" ? line.substr(colon + 2) : name + ": " + line.substr(colon + 2);
    }
    if (start == std::string::npos) break;
    end = start;
  }
  return found.empty() ? what.substr(what.find_last_of('\n') + 1) : found;
}

torch::Device resolve_device(const std::string& text) {
  torch::Device device = torch::kCPU;
  try {
    device = torch::Device(text);
  } catch (const std::exception& err) {
    throw std::runtime_error("device '" + text + "' is not a torch device (" + script_error(err) +
                             ")");
  }
  if (device.is_cpu()) return device;
  if (!device.is_cuda())
    throw std::runtime_error("device '" + text + "': symbreak runs on 'cpu' or 'cuda[:N]'");
  if (!torch::cuda::is_available())
    throw std::runtime_error("device '" + text + "' asked, but this libtorch (" + TORCH_VERSION +
                             ") sees no CUDA device (torch::cuda::is_available() is false)");
  const auto count = torch::cuda::device_count();
  if (device.has_index() && static_cast<size_t>(device.index()) >= count)
    throw std::runtime_error("device '" + text + "': this machine has " + std::to_string(count) +
                             " CUDA device(s)");
  return device;
}

std::shared_ptr<Model> load_model(const std::string& path, const std::string& dtype_request,
                                  const std::string& extensions_directory,
                                  const torch::Device& device, bool& from_cache) {
  const std::string key = file_key(path) + "|" + dtype_request + "|" + device.str();
  auto& cache = model_cache();
  const auto found = cache.find(key);
  if (found != cache.end()) {
    from_cache = true;
    return found->second;
  }
  from_cache = false;

  keep_freed_memory();
  auto model = std::make_shared<Model>();
  model->path = path;
  // A metatomic file: raw (AtomisticModel.save, mtt export), served in the wrapper template,
  // or wrapped by `symbreak export`; its extensions loaded first. Told from the archive.
  std::string recorded_extensions;
  const FileKind kind = classify_model_file(path);
  switch (kind) {
    case FileKind::RawMetatomic:
      model->metatomic = true;
      prepare_metatomic(path, extensions_directory, "");
      break;
    case FileKind::WrappedMetatomic:
      model->metatomic = true;
      try {
        const auto meta = LAMMPS_NS::json::parse(read_extra_file(path, "metadata.json"));
        const auto& config = meta.at("config");
        if (config.contains("name") && config.at("name").is_string())
          model->metatomic_name = config.at("name").get<std::string>();
        if (config.contains("extensions_directory") &&
            config.at("extensions_directory").is_string())
          recorded_extensions = config.at("extensions_directory").get<std::string>();
      } catch (const std::exception&) {
        // a corrupt metadata.json is reported below, after loading
      }
      prepare_metatomic(path, extensions_directory, recorded_extensions);
      break;
    case FileKind::Symbreak:
      break;
  }
  std::vector<int> species;
  double cutoff = 0.0, receptive_field = 0.0;
  int contract = 1;
  if (kind == FileKind::RawMetatomic) {
    // no metadata.json: the configured wrapper describes itself
    model->module = wrap_raw_metatomic(path, extensions_directory, model->metatomic_name);
    for (const auto z : model->module.attr("species").toIntVector())
      species.push_back(static_cast<int>(z));
    cutoff = model->module.attr("cutoff").toDouble();
    receptive_field = model->module.attr("receptive_field").toDouble();
    contract = static_cast<int>(model->module.attr("contract_version").toInt());
    model->torch_version = read_extra_file(path, "torch-version");
    if (model->torch_version.empty()) model->torch_version = TORCH_VERSION;
  } else {
    torch::jit::ExtraFilesMap extra{{"metadata.json", ""}};
    try {
      model->module = torch::jit::load(path, torch::kCPU, extra);
    } catch (const std::exception& err) {
      std::string what = err.what();
      what = what.substr(0, what.find('\n'));
      throw std::runtime_error(
          "'" + path + "' is not a readable symbreak model file: " + what +
          (model->metatomic ? " (a metatomic model: " + metatomic_versions() + ")" : ""));
    }
    if (extra["metadata.json"].empty())
      throw std::runtime_error("'" + path + "' has no metadata.json: not a symbreak model file");
    try {
      const auto meta = LAMMPS_NS::json::parse(extra["metadata.json"]);
      species = meta.at("species").get<std::vector<int>>();
      cutoff = meta.at("cutoff").get<double>();
      receptive_field = meta.at("receptive_field").get<double>();
      model->torch_version = meta.at("torch_version").get<std::string>();
      if (meta.contains("contract")) contract = meta.at("contract").get<int>();
    } catch (const std::exception& err) {
      throw std::runtime_error("'" + path + "': corrupt metadata.json: " + err.what());
    }
  }

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

  // The contract: entry points and version (an older file has neither).
  auto& module = model->module;
  std::string missing;
  for (const char* method : {"compute", "parse_policy", "policy_rotations", "energy_spread"})
    if (!module.find_method(method)) missing += (missing.empty() ? "" : ", ") + std::string(method);
  const int version = module.hasattr("contract_version")
                          ? static_cast<int>(module.attr("contract_version").toInt())
                          : 1;
  if (!missing.empty() || version != kContractVersion || contract != kContractVersion)
    throw std::runtime_error("'" + path + "' is a model file of contract version " +
                             std::to_string(version) +
                             " (metadata.json: " + std::to_string(contract) + ")" +
                             (missing.empty() ? "" : ", without the entry point(s) " + missing) +
                             "; this plugin reads contract version " +
                             std::to_string(kContractVersion) + ": " + reexport_hint(path));

  // The metadata must describe the module it travels with.
  try {
    for (const auto z : module.attr("species").toIntVector())
      model->species.push_back(static_cast<int>(z));
    model->masses = module.attr("masses").toDoubleVector();
    model->cutoff = module.attr("cutoff").toDouble();
    model->receptive_field = module.attr("receptive_field").toDouble();
    model->min_distance = module.attr("min_distance").toDouble();
  } catch (const std::exception& err) {
    throw std::runtime_error("'" + path + "': the module lacks a contract attribute (" +
                             script_error(err) + "): " + reexport_hint(path));
  }
  const auto mismatch = [&](const std::string& field, const std::string& written,
                            const std::string& inside) {
    throw std::runtime_error("'" + path + "': metadata.json says " + field + " = " + written +
                             ", but the module holds " + inside +
                             ": a corrupt or hand-edited file (re-export it)");
  };
  if (species != model->species) mismatch("species", join(species), join(model->species));
  if (cutoff != model->cutoff)
    mismatch("cutoff", std::to_string(cutoff), std::to_string(model->cutoff));
  if (receptive_field != model->receptive_field)
    mismatch("receptive_field", std::to_string(receptive_field),
             std::to_string(model->receptive_field));
  if (model->cutoff <= 0.0 || model->receptive_field < model->cutoff || model->species.empty() ||
      model->masses.size() != model->species.size())
    throw std::runtime_error("'" + path + "': corrupt model (cutoff " +
                             std::to_string(model->cutoff) + ", receptive field " +
                             std::to_string(model->receptive_field) + ")");
  // hops of cutoff length that span the receptive field (layers x cutoff for the PET; a
  // metatomic model's interaction range need not be a multiple of its cutoff)
  model->n_layers =
      std::max(1, static_cast<int>(std::ceil(model->receptive_field / model->cutoff - 1e-6)));

  module.eval();
  for (const auto& p : module.parameters()) {
    model->dtype = p.scalar_type();
    break;
  }
  if (dtype_request == "float64" && model->dtype != torch::kFloat64) {
    // floating-point parameters and buffers only, as Python's .double() (Module::to would
    // also convert the integer buffers, e.g. the species lookup)
    torch::NoGradGuard no_grad;
    for (auto p : module.parameters())
      if (p.is_floating_point()) p.set_data(p.to(torch::kFloat64));
    for (auto b : module.buffers())
      if (b.is_floating_point()) b.set_data(b.to(torch::kFloat64));
    model->dtype = torch::kFloat64;
  } else if (dtype_request == "float32" && model->dtype != torch::kFloat32) {
    throw std::runtime_error("'" + path +
                             "' is a float64 model: dtype float32 is not supported "
                             "for it (export it in float32)");
  }
  // Forces need gradients with respect to the edge vectors only; with trainable weights
  // TorchScript's backward would also compute every weight gradient (~1.45x the time).
  for (auto p : module.parameters()) p.requires_grad_(false);
  // Parameters and buffers (the grid tables included) on the device; the inputs go there
  // once per force call (pair_symbreak.cpp).
  if (!device.is_cpu()) module.to(device);
  model->device = device;
  // Other entries of the same file (an older version of it) are dropped.
  const std::string real = file_key(path).substr(0, file_key(path).find('|'));
  for (auto it = cache.begin(); it != cache.end();)
    it = (it->first.compare(0, real.size() + 1, real + "|") == 0) ? cache.erase(it) : ++it;
  cache[key] = model;
  return model;
}

}  // namespace symbreak
