// Ingest transforms (see transform.h). parse() runs on the main thread at
// start; apply() on the consumer thread, for every transformed value.
#include "config/transform.h"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "config/config_yaml.h"
#include "larder/layout/format.h"

namespace larder::sidecar {
namespace {

using config_yaml::each_item;
using config_yaml::fail;
using config_yaml::MapNode;
using config_yaml::present;

constexpr const char* kStepList =
    "log1p, clip, standardize, minmax, bucketize, vocabulary, impute, affine, ordinal, one_hot, project";

bool parse_kind(std::string_view name, TransformKind* out) {
  for (TransformKind k :
       {TransformKind::kLog1p, TransformKind::kClip, TransformKind::kStandardize, TransformKind::kMinMax,
        TransformKind::kBucketize, TransformKind::kVocabulary, TransformKind::kImpute, TransformKind::kAffine,
        TransformKind::kOrdinal, TransformKind::kOneHot, TransformKind::kProject}) {
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
    case TransformKind::kImpute: return "{impute: {value: 0}}";
    case TransformKind::kAffine: return "{affine: {scale: 0.5, offset: -1}}";
    case TransformKind::kOrdinal: return "{ordinal: {categories: [US, DE, FR], unknown_value: -1}}";
    case TransformKind::kOneHot: return "{one_hot: {categories: [US, DE, FR], handle_unknown: ignore}}";
    case TransformKind::kProject: return "{project: {components: [[0.6, 0.8]], mean: [1, 2]}}";
  }
  return "";
}

bool category_step(const TransformStep& s) {
  return s.kind == TransformKind::kOrdinal || s.kind == TransformKind::kOneHot;
}

// A step that reads a string: a vocabulary, or categories that are strings.
bool reads_string(const TransformStep& s) {
  return s.kind == TransformKind::kVocabulary || (category_step(s) && s.string_categories);
}

// `categories`: strings or numbers, and at most one null. A quoted scalar
// is a string even when it reads as a number (YAML's own rule), so "1" and
// 1 are different categories, as they are to scikit-learn.
void parse_categories(const MapNode& p, TransformStep& step) {
  if (!p.has("categories")) fail(p.child("categories"), "required (a list of strings or of numbers)");
  bool numbers = false, strings = false;
  std::vector<std::string> texts;
  std::vector<double> values;  // NaN at the null's position, which no number equals
  each_item(p.node("categories"), p.child("categories"), true, [&](const YAML::Node& c, const std::string& cpath) {
    const auto position = static_cast<int64_t>(texts.size());
    if (c.IsNull()) {
      if (step.null_category >= 0) fail(cpath, fmt::format("a second null (also categories[{}])", step.null_category));
      step.null_category = position;
      texts.emplace_back();
      values.push_back(std::numeric_limits<double>::quiet_NaN());
      return;
    }
    if (!c.IsScalar()) fail(cpath, "expected a string, a number or null");
    double v = std::numeric_limits<double>::quiet_NaN();
    if (c.Tag() != "!" && config_yaml::parse_finite(c.Scalar(), &v)) {
      numbers = true;
    } else {
      strings = true;
    }
    if (numbers && strings) {
      fail(cpath, "categories are all strings or all numbers (quote a number to make it a string)");
    }
    for (size_t k = 0; k < texts.size(); ++k) {
      if (static_cast<int64_t>(k) == step.null_category) continue;
      if (strings ? texts[k] == c.Scalar() : values[k] == v) {
        fail(cpath, fmt::format("duplicate category \"{}\" (also categories[{}])", c.Scalar(), k));
      }
    }
    texts.push_back(c.Scalar());
    values.push_back(v);
  });
  if (texts.empty()) fail(p.child("categories"), "needs at least one category");
  step.string_categories = strings;
  if (strings) {
    step.values = std::move(texts);
  } else {
    step.boundaries = std::move(values);
  }
}

std::vector<double> finite_list(const YAML::Node& node, const std::string& path) {
  std::vector<double> out;
  each_item(node, path, true, [&](const YAML::Node& b, const std::string& bpath) {
    double v = 0;
    if (!b.IsScalar() || !config_yaml::parse_finite(b.Scalar(), &v)) {
      fail(bpath, fmt::format("expected a finite number, got \"{}\"", b.IsScalar() ? b.Scalar() : "?"));
    }
    out.push_back(v);
  });
  return out;
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
    case TransformKind::kImpute: {
      if (index != 0) fail(ppath, "must be the first step (it stands for a missing input value)");
      const MapNode p(params, ppath, {"value", "missing"});
      if (!p.has("value")) fail(p.child("value"), "required (what a missing value becomes)");
      // Read as a number or as a string once the next step says which the
      // chain's input is (TransformChain::parse).
      if (!p.node("value").IsScalar()) fail(p.child("value"), "expected a number or a string");
      step.impute_string = p.node("value").Scalar();
      if (p.has("missing")) {
        if (!p.node("missing").IsScalar()) fail(p.child("missing"), "expected a number or a string");
        step.has_missing = true;
        step.missing_string = p.node("missing").Scalar();
      }
      break;
    }
    case TransformKind::kAffine: {
      const MapNode p(params, ppath, {"scale", "offset"});
      step.lo = required_finite(p, "scale");
      step.hi = required_finite(p, "offset");
      break;
    }
    case TransformKind::kOrdinal: {
      const MapNode p(params, ppath, {"categories", "unknown_value", "missing_value"});
      parse_categories(p, step);
      const std::optional<int64_t> unknown = p.signed_integer("unknown_value");
      step.unknown_refused = !unknown;
      step.unknown_index = unknown.value_or(0);
      const std::optional<int64_t> missing = p.signed_integer("missing_value");
      if (missing && step.null_category < 0) {
        fail(p.child("missing_value"), "needs a null among the categories (the value a null takes)");
      }
      step.has_missing_value = missing.has_value();
      step.missing_index = missing.value_or(0);
      break;
    }
    case TransformKind::kOneHot: {
      const MapNode p(params, ppath, {"categories", "handle_unknown", "drop", "index"});
      parse_categories(p, step);
      const std::string handle = p.str("handle_unknown", std::string("error"));
      if (handle != "error" && handle != "ignore") {
        fail(p.child("handle_unknown"), fmt::format("expected error or ignore, got \"{}\"", handle));
      }
      step.unknown_refused = handle == "error";
      const auto n = static_cast<int64_t>(std::max(step.values.size(), step.boundaries.size()));
      if (p.has("drop")) step.drop = static_cast<int64_t>(p.integer("drop", std::nullopt, 0, n - 1));
      if (p.has("index")) {
        step.pick = static_cast<int64_t>(p.integer("index", std::nullopt, 0, n - 1));
        if (step.pick == step.drop) fail(p.child("index"), "is the dropped category");
      }
      if (step.drop >= 0 && n == 1) fail(p.child("drop"), "would leave no category");
      break;
    }
    case TransformKind::kProject: {
      if (index != 0) fail(ppath, "must be the only step (it reads a vector)");
      const MapNode p(params, ppath, {"components", "mean", "divide"});
      if (!p.has("components")) fail(p.child("components"), "required (a list of rows, each a list of numbers)");
      each_item(p.node("components"), p.child("components"), true,
                [&](const YAML::Node& row, const std::string& rpath) {
                  const std::vector<double> r = finite_list(row, rpath);
                  if (r.empty()) fail(rpath, "needs at least one number");
                  if (step.rows > 0 && r.size() != step.cols) {
                    fail(rpath, fmt::format("{} numbers, the first row has {}", r.size(), step.cols));
                  }
                  step.cols = r.size();
                  ++step.rows;
                  step.matrix.insert(step.matrix.end(), r.begin(), r.end());
                });
      if (step.rows == 0) fail(p.child("components"), "needs at least one row");
      if (step.rows > layout::kMaxVectorDims || step.cols > layout::kMaxVectorDims) {
        fail(p.child("components"),
             fmt::format("at most {} rows of {} numbers", layout::kMaxVectorDims, layout::kMaxVectorDims));
      }
      if (p.has("mean")) {
        step.mean = finite_list(p.node("mean"), p.child("mean"));
        if (step.mean.size() != step.cols) {
          fail(p.child("mean"), fmt::format("{} numbers, the components have {} columns", step.mean.size(), step.cols));
        }
      }
      if (p.has("divide")) {
        step.divide = finite_list(p.node("divide"), p.child("divide"));
        if (step.divide.size() != step.rows) {
          fail(p.child("divide"),
               fmt::format("{} numbers, the components have {} rows", step.divide.size(), step.rows));
        }
        for (size_t k = 0; k < step.divide.size(); ++k) {
          if (!(step.divide[k] > 0)) fail(fmt::format("{}[{}]", p.child("divide"), k), "must be > 0");
        }
      }
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
    case TransformKind::kImpute: return "impute";
    case TransformKind::kAffine: return "affine";
    case TransformKind::kOrdinal: return "ordinal";
    case TransformKind::kOneHot: return "one_hot";
    case TransformKind::kProject: return "project";
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
  std::vector<std::string> paths;
  each_item(node, path, false, [&](const YAML::Node& s, const std::string& spath) {
    chain.steps_.push_back(parse_step(s, spath, chain.steps_.size()));
    paths.push_back(spath);
  });
  std::vector<TransformStep>& steps = chain.steps_;
  if (steps.empty()) return chain;
  const size_t first_string = steps.front().kind == TransformKind::kImpute ? 1 : 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    if (reads_string(steps[i]) && i != first_string) {
      fail(paths[i] + "." + transform_kind_name(steps[i].kind),
           "must be the first step (or follow an impute) when it reads strings: it turns the input string into a "
           "number, which the later steps take");
    }
    if (steps[i].kind == TransformKind::kOneHot && i + 1 != steps.size()) {
      fail(paths[i + 1], "one_hot must be the last step (it gives a vector or a bool)");
    }
    if (steps[i].kind == TransformKind::kProject && steps.size() != 1) {
      fail(paths[i == 0 ? 1 : i], "project must be the only step (it reads a vector)");
    }
  }
  if (steps.front().kind == TransformKind::kProject) {
    chain.input_ = TransformInput::kVector;
  } else if (first_string < steps.size() && reads_string(steps[first_string])) {
    chain.input_ = TransformInput::kString;
  }
  TransformStep& head = steps.front();
  if (head.kind == TransformKind::kImpute && !chain.string_input()) {
    if (!config_yaml::parse_finite(head.impute_string, &head.lo)) {
      fail(paths[0] + ".impute.value",
           fmt::format("expected a finite number (the chain reads numbers), got \"{}\"", head.impute_string));
    }
    if (head.has_missing && !config_yaml::parse_finite(head.missing_string, &head.hi)) {
      fail(paths[0] + ".impute.missing",
           fmt::format("expected a finite number (the chain reads numbers), got \"{}\"", head.missing_string));
    }
  }
  // Short lists are scanned (a few string compares beat hashing); long ones
  // get a map.
  if (chain.string_input()) {
    const TransformStep& s = steps[first_string];
    if (s.values.size() > 8) {
      for (size_t i = 0; i < s.values.size(); ++i) {
        if (static_cast<int64_t>(i) != s.null_category) chain.vocabulary_.emplace(s.values[i], static_cast<int64_t>(i));
      }
    }
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
  const TransformStep& last = steps_.back();
  switch (last.kind) {
    case TransformKind::kBucketize:
    case TransformKind::kVocabulary:
    case TransformKind::kOrdinal: return TransformOutput::kInt64;
    case TransformKind::kOneHot: return last.pick >= 0 ? TransformOutput::kBool : TransformOutput::kVector;
    case TransformKind::kProject: return TransformOutput::kVector;
    case TransformKind::kImpute:  // an impute alone passes its number through
    default: return TransformOutput::kFloat64;
  }
}

size_t TransformChain::output_dims() const noexcept {
  if (output() != TransformOutput::kVector) return 0;
  const TransformStep& last = steps_.back();
  if (last.kind == TransformKind::kProject) return last.rows;
  return std::max(last.values.size(), last.boundaries.size()) - (last.drop >= 0 ? 1 : 0);
}

bool TransformChain::takes_null() const noexcept {
  return !steps_.empty() && (steps_.front().kind == TransformKind::kImpute || category_step(steps_.front()));
}

std::string TransformChain::describe() const {
  std::string out;
  for (const TransformStep& s : steps_) {
    if (!out.empty()) out += ", ";
    out += transform_kind_name(s.kind);
  }
  return out;
}

int64_t TransformChain::string_position(std::string_view s) const noexcept {
  const TransformStep& v = steps_[string_step()];
  if (vocabulary_.empty()) {
    for (size_t i = 0; i < v.values.size(); ++i) {
      if (v.values[i] == s && static_cast<int64_t>(i) != v.null_category) return static_cast<int64_t>(i);
    }
    return -1;
  }
  const auto it = vocabulary_.find(s);  // transparent: no std::string is built
  return it == vocabulary_.end() ? -1 : it->second;
}

bool TransformChain::apply(double x, TransformResult* out, TransformFailure* why) const noexcept {
  if (input_ != TransformInput::kNumber) {
    *why = TransformFailure{
        0, steps_[string_step()].kind,
        input_ == TransformInput::kString ? "takes a string, not a number" : "takes a vector, not a number", x, false};
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
  const size_t at = string_step();
  if (at == 1 && steps_[0].has_missing && s == steps_[0].missing_string) s = steps_[0].impute_string;
  const TransformStep& step = steps_[at];
  const int64_t pos = string_position(s);
  if (step.kind == TransformKind::kVocabulary) {
    const int64_t index = pos < 0 ? step.unknown_index : pos + 1;
    return run(at + 1, static_cast<double>(index), index, out, why);
  }
  return category(at, pos, out, why);
}

bool TransformChain::apply_null(TransformResult* out, TransformFailure* why) const noexcept {
  if (!takes_null()) {
    *why = TransformFailure{0, steps_.empty() ? TransformKind::kLog1p : steps_.front().kind,
                            "takes no null (start the chain with an impute)", 0, false};
    return false;
  }
  const TransformStep& head = steps_.front();
  if (head.kind == TransformKind::kImpute) {
    if (string_input()) {
      const TransformStep& step = steps_[1];
      const int64_t pos = string_position(head.impute_string);
      if (step.kind == TransformKind::kVocabulary) {
        const int64_t index = pos < 0 ? step.unknown_index : pos + 1;
        return run(2, static_cast<double>(index), index, out, why);
      }
      return category(1, pos, out, why);
    }
    return run(1, head.lo, 0, out, why);
  }
  // A category step first: null is its null category, or unknown.
  return category(0, head.null_category, out, why);
}

bool TransformChain::apply(const double* x, size_t n, TransformResult* out, TransformFailure* why) const noexcept {
  if (input_ != TransformInput::kVector || n != steps_.front().cols) {
    *why = TransformFailure{
        0, steps_.empty() ? TransformKind::kLog1p : steps_.front().kind,
        input_ == TransformInput::kVector ? "takes a vector of another length" : "takes a scalar, not a vector",
        static_cast<double>(n), false};
    return false;
  }
  const TransformStep& s = steps_.front();
  // sklearn's PCA.transform: X - mean first, then the product with the
  // components, then the whitening division; the same order here.
  for (size_t j = 0; j < s.rows; ++j) {
    const double* row = s.matrix.data() + j * s.cols;
    double acc = 0;
    for (size_t c = 0; c < s.cols; ++c) acc += (s.mean.empty() ? x[c] : x[c] - s.mean[c]) * row[c];
    if (!s.divide.empty()) acc /= s.divide[j];
    if (!std::isfinite(acc)) {
      *why = TransformFailure{0, s.kind, "gives a non-finite value", acc, true};
      return false;
    }
    out->vector[j] = acc;
  }
  return true;
}

bool TransformChain::category(size_t i, int64_t pos, TransformResult* out, TransformFailure* why) const noexcept {
  const TransformStep& s = steps_[i];
  if (pos < 0 && s.unknown_refused) {
    *why = TransformFailure{i, s.kind, "got a value that is not one of its categories", 0, false};
    return false;
  }
  if (s.kind == TransformKind::kOrdinal) {
    int64_t index = pos;
    if (pos < 0) {
      index = s.unknown_index;
    } else if (pos == s.null_category && s.has_missing_value) {
      index = s.missing_index;
    }
    return run(i + 1, static_cast<double>(index), index, out, why);
  }
  // one_hot, the last step.
  if (s.pick >= 0) {
    out->i64 = pos == s.pick ? 1 : 0;
    out->f64 = static_cast<double>(out->i64);
    return true;
  }
  const size_t dims = output_dims();
  for (size_t k = 0; k < dims; ++k) out->vector[k] = 0;
  if (pos >= 0 && pos != s.drop) out->vector[s.drop >= 0 && pos > s.drop ? pos - 1 : pos] = 1;
  return true;
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
      case TransformKind::kProject:     // the only step, run by apply(const double*, ...)
        *why = TransformFailure{i, s.kind, "takes a string, not a number", in, false};
        return false;
      case TransformKind::kImpute:
        if (s.has_missing && x == s.hi) x = s.lo;
        break;
      case TransformKind::kAffine: x = x * s.lo + s.hi; break;
      case TransformKind::kOrdinal:
      case TransformKind::kOneHot: {
        if (s.string_categories) {  // parse() allows it only where apply(string_view) runs it
          *why = TransformFailure{i, s.kind, "takes a string, not a number", in, false};
          return false;
        }
        int64_t pos = -1;
        for (size_t k = 0; k < s.boundaries.size(); ++k) {
          if (s.boundaries[k] == x) {
            pos = static_cast<int64_t>(k);
            break;
          }
        }
        if (pos < 0 && s.unknown_refused) {
          *why = TransformFailure{i, s.kind, "got a value that is not one of its categories", in, true};
          return false;
        }
        return category(i, pos, out, why);
      }
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
