// Ingest transforms (see transform.h). parse() runs on the main thread at
// start; apply() on the consumer thread, for every transformed value.
#include "config/transform.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "config/config_yaml.h"

namespace larder::sidecar {
namespace {

using config_yaml::each_item;
using config_yaml::fail;
using config_yaml::MapNode;
using config_yaml::present;

constexpr const char* kStepList = "log1p, clip, standardize, minmax, bucketize, vocabulary";

bool parse_kind(std::string_view name, TransformKind* out) {
  for (TransformKind k : {TransformKind::kLog1p, TransformKind::kClip, TransformKind::kStandardize,
                          TransformKind::kMinMax, TransformKind::kBucketize, TransformKind::kVocabulary}) {
    if (name == transform_kind_name(k)) {
      *out = k;
      return true;
    }
  }
  return false;
}

// How a step with parameters is written, for "needs parameters" errors.
const char* example(TransformKind kind) {
  switch (kind) {
    case TransformKind::kLog1p: return "log1p";
    case TransformKind::kClip: return "{clip: {min: 0, max: 100}}";
    case TransformKind::kStandardize: return "{standardize: {mean: 3.2, std: 1.5}}";
    case TransformKind::kMinMax: return "{minmax: {min: 0, max: 100}}";
    case TransformKind::kBucketize: return "{bucketize: {boundaries: [10, 100, 1000]}}";
    case TransformKind::kVocabulary: return "{vocabulary: {values: [US, DE, FR]}}";
  }
  return "";
}

double required_finite(const MapNode& p, const char* key) {
  const std::optional<double> v = p.finite(key);
  if (!v) fail(p.child(key), "required");
  return *v;
}

TransformStep parse_step(const YAML::Node& node, const std::string& path, size_t index) {
  TransformStep step;
  std::string name;
  YAML::Node params;
  if (node.IsScalar()) {
    name = node.Scalar();
  } else if (node.IsMap()) {
    if (node.size() != 1) {
      fail(path, fmt::format("a step is a name (log1p) or a mapping with one key, the step's name, e.g. {} "
                             "(write each step as its own list item)",
                             example(TransformKind::kClip)));
    }
    name = node.begin()->first.as<std::string>();
    params = node.begin()->second;
  } else {
    fail(path, fmt::format("expected a step: log1p, or one of {} with its parameters", kStepList));
  }
  if (!parse_kind(name, &step.kind)) fail(path, fmt::format("unknown step \"{}\" (expected {})", name, kStepList));
  const std::string ppath = path + "." + name;
  if (node.IsScalar() && step.kind != TransformKind::kLog1p) {
    fail(path, fmt::format("{} needs parameters, e.g. {}", name, example(step.kind)));
  }

  switch (step.kind) {
    case TransformKind::kLog1p:
      if (present(params) && !(params.IsMap() && params.size() == 0)) {
        fail(ppath, "log1p takes no parameters (write it as the bare string log1p)");
      }
      break;
    case TransformKind::kClip: {
      const MapNode p(params, ppath, {"min", "max"});
      const std::optional<double> lo = p.finite("min");
      const std::optional<double> hi = p.finite("max");
      if (!lo && !hi) fail(ppath, "needs min, max or both");
      if (lo && hi && *lo > *hi) fail(p.child("max"), fmt::format("must be >= min ({}), got {}", *lo, *hi));
      step.lo = lo ? *lo : -std::numeric_limits<double>::infinity();
      step.hi = hi ? *hi : std::numeric_limits<double>::infinity();
      break;
    }
    case TransformKind::kStandardize: {
      const MapNode p(params, ppath, {"mean", "std"});
      step.lo = required_finite(p, "mean");
      step.hi = required_finite(p, "std");
      if (!(step.hi > 0)) fail(p.child("std"), fmt::format("must be > 0, got {}", step.hi));
      break;
    }
    case TransformKind::kMinMax: {
      const MapNode p(params, ppath, {"min", "max"});
      step.lo = required_finite(p, "min");
      step.hi = required_finite(p, "max");
      if (!(step.hi > step.lo)) fail(p.child("max"), fmt::format("must be > min ({}), got {}", step.lo, step.hi));
      if (!std::isfinite(step.hi - step.lo)) fail(ppath, "max - min does not fit a finite double");
      break;
    }
    case TransformKind::kBucketize: {
      const MapNode p(params, ppath, {"boundaries"});
      if (!p.has("boundaries")) fail(p.child("boundaries"), "required (a list of increasing numbers)");
      each_item(p.node("boundaries"), p.child("boundaries"), true, [&](const YAML::Node& b, const std::string& bpath) {
        double v = 0;
        if (!b.IsScalar() || !config_yaml::parse_finite(b.Scalar(), &v)) {
          fail(bpath, fmt::format("expected a finite number, got \"{}\"", b.IsScalar() ? b.Scalar() : "?"));
        }
        if (!step.boundaries.empty() && !(v > step.boundaries.back())) {
          fail(bpath, fmt::format("boundaries must be strictly increasing: {} follows {}", v, step.boundaries.back()));
        }
        step.boundaries.push_back(v);
      });
      if (step.boundaries.empty()) fail(p.child("boundaries"), "needs at least one boundary");
      break;
    }
    case TransformKind::kVocabulary: {
      if (index != 0) {
        fail(ppath, "must be the first step (it turns the input string into a number, which the later steps take)");
      }
      const MapNode p(params, ppath, {"values", "unknown_index"});
      if (!p.has("values")) fail(p.child("values"), "required (a list of strings)");
      each_item(p.node("values"), p.child("values"), true, [&](const YAML::Node& v, const std::string& vpath) {
        if (!v.IsScalar()) fail(vpath, "expected a string");
        const std::string& s = v.Scalar();
        if (s.empty()) fail(vpath, "must not be empty");
        const auto dup = std::find(step.values.begin(), step.values.end(), s);
        if (dup != step.values.end()) {
          fail(vpath, fmt::format("duplicate value \"{}\" (also values[{}])", s, dup - step.values.begin()));
        }
        step.values.push_back(s);
      });
      if (step.values.empty()) fail(p.child("values"), "needs at least one value");
      step.unknown_index = p.signed_integer("unknown_index").value_or(0);
      break;
    }
  }
  return step;
}

}  // namespace

const char* transform_kind_name(TransformKind kind) noexcept {
  switch (kind) {
    case TransformKind::kLog1p: return "log1p";
    case TransformKind::kClip: return "clip";
    case TransformKind::kStandardize: return "standardize";
    case TransformKind::kMinMax: return "minmax";
    case TransformKind::kBucketize: return "bucketize";
    case TransformKind::kVocabulary: return "vocabulary";
  }
  return "unknown";
}

std::string TransformFailure::str() const {
  if (!input_is_number) return fmt::format("transform[{}] ({}) {}", step, transform_kind_name(kind), problem);
  return fmt::format("transform[{}] ({}) {}, got {}", step, transform_kind_name(kind), problem, input);
}

TransformChain TransformChain::parse(const YAML::Node& node, const std::string& path) {
  TransformChain chain;
  if (!present(node)) return chain;
  if (!node.IsSequence()) {
    fail(path, fmt::format("expected a list of steps, e.g. [{}, log1p]", example(TransformKind::kClip)));
  }
  each_item(node, path, false, [&](const YAML::Node& s, const std::string& spath) {
    chain.steps_.push_back(parse_step(s, spath, chain.steps_.size()));
  });
  // Short vocabularies are scanned (a few string compares beat hashing);
  // long ones get a map.
  if (chain.string_input() && chain.steps_.front().values.size() > 8) {
    const std::vector<std::string>& values = chain.steps_.front().values;
    for (size_t i = 0; i < values.size(); ++i) chain.vocabulary_.emplace(values[i], static_cast<int64_t>(i + 1));
  }
  return chain;
}

TransformChain TransformChain::parse_yaml(std::string_view yaml, const std::string& path) {
  YAML::Node node;
  try {
    node = YAML::Load(std::string(yaml));
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: {}", path, e.msg));
  }
  return parse(node, path);
}

TransformOutput TransformChain::output() const noexcept {
  if (steps_.empty()) return TransformOutput::kFloat64;
  const TransformKind last = steps_.back().kind;
  return last == TransformKind::kBucketize || last == TransformKind::kVocabulary ? TransformOutput::kInt64
                                                                                 : TransformOutput::kFloat64;
}

std::string TransformChain::describe() const {
  std::string out;
  for (const TransformStep& s : steps_) {
    if (!out.empty()) out += ", ";
    out += transform_kind_name(s.kind);
  }
  return out;
}

int64_t TransformChain::vocabulary_index(std::string_view s) const noexcept {
  const TransformStep& v = steps_.front();
  if (vocabulary_.empty()) {
    for (size_t i = 0; i < v.values.size(); ++i) {
      if (v.values[i] == s) return static_cast<int64_t>(i + 1);
    }
    return v.unknown_index;
  }
  const auto it = vocabulary_.find(s);  // transparent: no std::string is built
  return it == vocabulary_.end() ? v.unknown_index : it->second;
}

bool TransformChain::apply(double x, TransformResult* out, TransformFailure* why) const noexcept {
  if (string_input()) {
    *why = TransformFailure{0, TransformKind::kVocabulary, "takes a string, not a number", x, false};
    return false;
  }
  return run(0, x, 0, out, why);
}

bool TransformChain::apply(std::string_view s, TransformResult* out, TransformFailure* why) const noexcept {
  if (!string_input()) {
    *why = TransformFailure{0, steps_.empty() ? TransformKind::kLog1p : steps_.front().kind,
                            "takes a number, not a string", 0, false};
    return false;
  }
  const int64_t index = vocabulary_index(s);
  return run(1, static_cast<double>(index), index, out, why);
}

bool TransformChain::run(size_t first, double x, int64_t int_result, TransformResult* out,
                         TransformFailure* why) const noexcept {
  for (size_t i = first; i < steps_.size(); ++i) {
    const TransformStep& s = steps_[i];
    const double in = x;
    switch (s.kind) {
      case TransformKind::kLog1p:
        // Written as !(x > -1) so that NaN is refused too.
        if (!(x > -1)) {
          *why = TransformFailure{i, s.kind, "needs an input > -1", in, true};
          return false;
        }
        x = std::log1p(x);
        break;
      case TransformKind::kClip: x = x < s.lo ? s.lo : (x > s.hi ? s.hi : x); break;
      case TransformKind::kStandardize: x = (x - s.lo) / s.hi; break;
      case TransformKind::kMinMax: x = (x - s.lo) / (s.hi - s.lo); break;
      case TransformKind::kBucketize: {
        if (std::isnan(x)) break;  // refused below as non-finite
        const auto n = std::upper_bound(s.boundaries.begin(), s.boundaries.end(), x) - s.boundaries.begin();
        int_result = static_cast<int64_t>(n);
        x = static_cast<double>(n);
        break;
      }
      case TransformKind::kVocabulary:  // parse() allows it only first, where apply(string_view) runs it
        *why = TransformFailure{i, s.kind, "takes a string, not a number", in, false};
        return false;
    }
    if (!std::isfinite(x)) {
      *why = TransformFailure{i, s.kind, "gives a non-finite value", in, true};
      return false;
    }
  }
  out->f64 = x;
  out->i64 = output() == TransformOutput::kInt64 ? int_result : 0;
  return true;
}

}  // namespace larder::sidecar
