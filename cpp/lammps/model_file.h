// What kind of model file pair_style symbreak was given, and what a contract file around a
// metatomic model needs before torch::jit::load: metatomic's and metatensor's TorchScript
// classes (registered by linking libmetatomic_torch / libmetatensor_torch, see
// CMakeLists.txt) and the model's TorchScript extensions.

#ifndef SYMBREAK_MODEL_FILE_H
#define SYMBREAK_MODEL_FILE_H

#include <map>
#include <string>

namespace symbreak {

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

//! The error for a RawMetatomic file: how to wrap it for LAMMPS.
std::string raw_metatomic_message(const std::string& path);

}  // namespace symbreak

#endif
