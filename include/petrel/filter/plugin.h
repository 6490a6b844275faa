// The plugin host (SPEC §8): loads a shared object implementing the C ABI of
// include/petrel/filter.h with dlopen(RTLD_NOW | RTLD_LOCAL) and adapts it to
// Filter. A missing symbol, a missing petrel_filter_entry, a wrong ABI version
// or a struct too small for it are errors found at load time, never in a
// session.
#pragma once

#include <memory>
#include <string>

#include "petrel/common/result.h"
#include "petrel/config/config.h"
#include "petrel/filter/filter.h"

namespace petrel::filter {

// Opens the plugin, checks its entry point and ABI, closes it again. For
// `petrel check-config`; does not run init.
Status check_plugin(const std::string& path);

// Opens the plugin and runs its init with the filter's options (in the
// master, before fork). `config_dir` is handed to the plugin for relative
// paths in its options. The filter's timeout (default 30 s) bounds each
// callback in the worker: past it the worker is ended by SIGALRM.
Result<std::unique_ptr<Filter>> make_plugin_filter(const config::Filter& settings,
                                                   const std::string& config_dir);

}  // namespace petrel::filter
