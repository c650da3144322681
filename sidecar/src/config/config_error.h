// ConfigError: a bad setting in the sidecar config, with a message that starts
// with the key path it is about (see config.h). Separate from config.h so
// that the pieces config.cc delegates to (transform.cc) can throw it without
// including the whole config. Thrown on the main thread, at start, while the
// config is read; never after.
#pragma once

#include <stdexcept>

namespace larder::sidecar {

class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace larder::sidecar
