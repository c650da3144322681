// Helpers for reading the sidecar's YAML config with key-path errors
// (config.cc, transform.cc). Main thread, at start: nothing here is on a hot
// path, and every problem throws ConfigError("<key path>: <problem>").
#pragma once

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "config/config_error.h"

namespace larder::sidecar::config_yaml {

[[noreturn]] inline void fail(const std::string& path, const std::string& problem) {
  throw ConfigError(path + ": " + problem);
}

inline std::string join(std::initializer_list<std::string_view> items) {
  std::string out;
  for (std::string_view s : items) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

// Missing keys of a const node yield an "invalid" node, which throws on most
// calls (even assignment); IsDefined() is safe on it.
inline bool present(const YAML::Node& n) { return n.IsDefined() && !n.IsNull(); }

// A finite number written as a YAML scalar ("3", "-0.5", "1e-3"); false for
// anything else, including .inf and .nan.
inline bool parse_finite(const std::string& s, double* out) {
  if (s.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v) || errno == ERANGE) return false;
  *out = v;
  return true;
}

// A YAML mapping at `path` whose keys must come from `allowed`.
class MapNode {
 public:
  MapNode(const YAML::Node& node, std::string path, std::initializer_list<std::string_view> allowed)
      : node_(present(node) ? node : YAML::Node(YAML::NodeType::Map)), path_(std::move(path)) {
    if (!node_.IsMap()) fail(path_, "expected a mapping of keys (" + join(allowed) + ")");
    for (const auto& kv : node_) {
      const std::string key = kv.first.as<std::string>();
      bool ok = false;
      for (std::string_view a : allowed) ok = ok || a == key;
      if (key == "recreate_on_schema_change") {
        // Named by the writer library's WriterOptions, and so looked for here.
        fail(child(key),
             "not a larder-sidecar setting: the sidecar never throws a segment's rows away by itself. After a "
             "schema change, set segment.on_schema_change: migrate to carry the rows into a new generation with "
             "the new schema, or give segment.name a new name (readers move to it), or stop the sidecar, delete "
             "the segment file and its .lock, and start it to refill from the stream or a re-send "
             "(docs/operations.md, \"Schema change\")");
      }
      if (!ok) fail(child(key), "unknown key (expected one of: " + join(allowed) + ")");
    }
  }

  std::string child(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  const std::string& path() const { return path_; }
  bool has(const char* key) const { return present(node_[key]); }
  YAML::Node node(const char* key) const { return node_[key]; }

  std::string scalar(const char* key) const {
    const YAML::Node n = node_[key];
    if (!n.IsScalar()) fail(child(key), "expected a single value");
    return n.Scalar();
  }
  std::string str(const char* key, std::optional<std::string> fallback = std::nullopt) const {
    if (!has(key)) {
      if (!fallback) fail(child(key), "required");
      return *fallback;
    }
    return scalar(key);
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    bool out;
    if (!node_[key].IsScalar() || !YAML::convert<bool>::decode(node_[key], out)) {
      fail(child(key),
           fmt::format("expected true or false, got \"{}\"", node_[key].IsScalar() ? node_[key].Scalar() : "?"));
    }
    return out;
  }
  uint64_t integer(const char* key, std::optional<uint64_t> fallback, uint64_t min, uint64_t max) const {
    if (!has(key)) {
      if (!fallback) fail(child(key), "required");
      return *fallback;
    }
    const std::string s = scalar(key);
    uint64_t v = 0;
    bool ok = !s.empty() && s.size() <= 19;
    for (char c : s) ok = ok && c >= '0' && c <= '9';
    if (ok) v = std::stoull(s);
    if (!ok || v < min || v > max)
      fail(child(key), fmt::format("expected an integer in [{}, {}], got \"{}\"", min, max, s));
    return v;
  }
  // A signed 64-bit integer (optional sign, digits only).
  std::optional<int64_t> signed_integer(const char* key) const {
    if (!has(key)) return std::nullopt;
    const std::string s = scalar(key);
    const size_t digits_at = !s.empty() && (s[0] == '-' || s[0] == '+') ? 1 : 0;
    bool ok = s.size() > digits_at && s.size() - digits_at <= 19;
    for (size_t i = digits_at; i < s.size(); ++i) ok = ok && s[i] >= '0' && s[i] <= '9';
    int64_t v = 0;
    if (ok) {
      errno = 0;
      char* end = nullptr;
      const long long parsed = std::strtoll(s.c_str(), &end, 10);
      ok = errno != ERANGE && end == s.c_str() + s.size();
      v = parsed;
    }
    if (!ok) fail(child(key), fmt::format("expected an integer in [-2^63, 2^63-1], got \"{}\"", s));
    return v;
  }
  double number(const char* key, double fallback, double min, double max, bool min_exclusive = false) const {
    if (!has(key)) return fallback;
    const std::string s = scalar(key);
    double v = 0;
    char* end = nullptr;
    v = std::strtod(s.c_str(), &end);
    const bool ok = !s.empty() && end == s.c_str() + s.size() && std::isfinite(v) &&
                    (min_exclusive ? v > min : v >= min) && v <= max;
    if (!ok)
      fail(child(key),
           fmt::format("expected a number in {}{}, {}], got \"{}\"", min_exclusive ? "(" : "[", min, max, s));
    return v;
  }
  // Any finite number, or nullopt when the key is absent.
  std::optional<double> finite(const char* key) const {
    if (!has(key)) return std::nullopt;
    const std::string s = scalar(key);
    double v = 0;
    if (!parse_finite(s, &v)) fail(child(key), fmt::format("expected a finite number, got \"{}\"", s));
    return v;
  }

 private:
  YAML::Node node_;
  std::string path_;
};

template <class Fn>
void each_item(const YAML::Node& seq, const std::string& path, bool required, Fn&& fn) {
  if (!present(seq)) {
    if (required) fail(path, "required (a list)");
    return;
  }
  if (!seq.IsSequence()) fail(path, "expected a list");
  for (size_t i = 0; i < seq.size(); ++i) fn(seq[i], fmt::format("{}[{}]", path, i));
}

}  // namespace larder::sidecar::config_yaml
