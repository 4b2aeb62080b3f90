// The model file side of pair_style symbreak, behind one entry point, load_model: where a
// model name points (a file, or a model shipped in the package), what kind of file it is,
// what a contract file around a metatomic model needs before torch::jit::load (metatomic's
// and metatensor's TorchScript classes, registered by linking libmetatomic_torch /
// libmetatensor_torch, see CMakeLists.txt, and the model's TorchScript extensions), the
// contract and metadata checks, the dtype, the device, and the cache of loaded models. No
// LAMMPS state: errors are std::runtime_error, whose message the pair style reports as it is.

#ifndef SYMBREAK_MODEL_FILE_H
#define SYMBREAK_MODEL_FILE_H

#include <torch/script.h>

#include <exception>
#include <memory>
#include <string>
#include <vector>

namespace symbreak {

//! A loaded model file: the TorchScript module (eval mode, parameters without gradients, in
//! `dtype`, on `device`) and the contract attributes the pair style needs (checked against
//! metadata.json).
struct Model {
  torch::jit::Module module;
  std::string path;
  std::vector<int> species;    // atomic numbers
  std::vector<double> masses;  // standard masses of the species (amu)
  double cutoff = 0.0;
  double receptive_field = 0.0;
  double min_distance = 0.0;
  int n_layers = 1;  // hops of cutoff length that span the receptive field
  std::string torch_version;
  torch::Dtype dtype = torch::kFloat32;
  torch::Device device = torch::kCPU;
  bool metatomic = false;      // a contract file around a metatomic model
  std::string metatomic_name;  // its name (metadata.json config.name)
};

//! The file `arg` names: itself if it is a file, else the model shipped in the package
//! (symbreak/models/ARG.pt). Throws std::runtime_error listing the shipped models.
std::string resolve_model_path(const std::string& arg);

//! The model in the file `path` (from resolve_model_path), loaded and checked: a metatomic
//! file's extensions loaded (from `extensions_directory` when not empty), a raw one set in
//! the wrapper template (symbreak/lib/metatomic_template.pt) and configured, the torch version, the
//! contract version and entry points, metadata.json against the module's attributes.
//! `dtype_request` is "auto" (as the file holds), "float64" (converted) or "float32" (a float64
//! file is refused); the module is then moved to `device` (from resolve_device). Models are cached
//! for the life of the process, keyed by the file (real path, size, mtime), `dtype_request` and
//! `device`; `from_cache` says whether this one was. Throws std::runtime_error with the message to
//! show.
std::shared_ptr<Model> load_model(const std::string& path, const std::string& dtype_request,
                                  const std::string& extensions_directory,
                                  const torch::Device& device, bool& from_cache);

//! The device `text` names ("cpu", "cuda", "cuda:N"), as symbreak.evaluator.resolve_device:
//! throws std::runtime_error naming it if torch cannot parse it, if it is neither the CPU nor
//! CUDA, or if this libtorch sees no such CUDA device.
torch::Device resolve_device(const std::string& text);

//! The atomic number of an element symbol ("O" -> 8), -1 if it is none.
int atomic_number(const std::string& symbol);

//! The symbol of atomic number z ("Z=n" outside the periodic table).
std::string element_symbol(int z);

//! The message of an error from the model file's code: for an exception raised in its
//! TorchScript code, the line "builtins.ValueError: MESSAGE" without the interpreter's
//! traceback (a ValueError as MESSAGE alone, others as "KindError: MESSAGE"); otherwise the
//! first line.
std::string script_error(const std::exception& err);

enum class FileKind {
  Symbreak,          // symbreak's metadata.json (or unreadable: torch::jit::load says why)
  WrappedMetatomic,  // symbreak's metadata.json and metatomic's extra files (symbreak export)
  RawMetatomic,      // metatomic's extra files only (AtomisticModel.save, mtt export)
};

//! The kind of a TorchScript archive, from the names of its extra files alone.
FileKind classify_model_file(const std::string& path);

//! The text of the extra file `name` of an archive ("" if absent or unreadable).
std::string read_extra_file(const std::string& path, const std::string& name);

//! Whether this plugin was linked with metatomic-torch.
bool metatomic_linked();

//! "metatomic-torch X, metatensor-torch Y" (or why there is none).
std::string metatomic_versions();

//! Before torch::jit::load of a WrappedMetatomic file: load the TorchScript extensions the
//! model names (from `extensions_directory` when not empty), and check that each of them is
//! loaded in this process. Throws std::runtime_error naming the file, the extensions and the
//! `extensions DIR` keyword; `recorded_directory` (the directory given at export, may be
//! empty) is named as a hint.
void prepare_metatomic(const std::string& path, const std::string& extensions_directory,
                       const std::string& recorded_directory);

}  // namespace symbreak

#endif
