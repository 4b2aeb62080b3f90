// See model_file.h.

// torch first: LAMMPS headers define macros (FLERR, NEIGHMASK, ...).
#include "model_file.h"

#include <caffe2/serialize/inline_container.h>
#include <link.h>

#include <set>
#include <stdexcept>
#include <vector>

#ifdef SYMBREAK_HAVE_METATOMIC
#include <metatensor/torch/misc.hpp>
#include <metatomic/torch.hpp>
#endif

#include "json.h"

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

std::string raw_metatomic_message(const std::string& path) {
  return "'" + path + "' is a metatomic model: wrap it once with `symbreak export " + path +
         " --output W.pt` (keeps its extensions; add --extensions DIR if it needs some) and "
         "load W.pt";
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

}  // namespace symbreak
