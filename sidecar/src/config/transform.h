// Ingest transforms (docs/aggregates.md, docs/sidecar.md): the scaling and
// encoding steps a field's value goes through between the message and the
// row, e.g. `transform: [{clip: {min: 0, max: 10000}}, log1p]`.
//
// A TransformChain is parsed once from the config (parse(), main thread, at
// start) and then applied by the decoder to every value of its field
// (apply(), consumer thread). apply() is on the hot path: it never allocates
// and never throws, and it reports a value outside a step's domain (log1p of
// -2) or a step producing a non-finite number as a failure, which rejects the
// message (reason bad_value), rather than storing NaN or infinity in a row.
//
// Steps and their output:
//   log1p                           ln(1 + x); x must be > -1
//   clip: {min, max}                x bounded to [min, max] (either bound optional)
//   standardize: {mean, std}        (x - mean) / std
//   minmax: {min, max}              (x - min) / (max - min), not clipped
//   bucketize: {boundaries: [...]}  the number of boundaries <= x: 0..len, an integer
//   vocabulary: {values: [...], unknown_index}
//                                   a string: values[i] -> i + 1, anything else ->
//                                   unknown_index (default 0); must be the first step
// A chain's output is int64 when its last step is bucketize or vocabulary,
// float64 otherwise.
//
// Transforms are ingest configuration, not schema: the segment stores the
// result in an ordinary field, and the schema fingerprint does not cover them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace YAML {
class Node;
}

namespace larder::sidecar {

enum class TransformKind : uint8_t { kLog1p, kClip, kStandardize, kMinMax, kBucketize, kVocabulary };

// "log1p", "clip", ... (the config spelling). Never null.
const char* transform_kind_name(TransformKind kind) noexcept;

enum class TransformOutput : uint8_t { kFloat64, kInt64 };

struct TransformStep {
  TransformKind kind = TransformKind::kLog1p;
  double lo = 0;                    // clip: min (-inf when absent); standardize: mean; minmax: min
  double hi = 0;                    // clip: max (+inf when absent); standardize: std; minmax: max
  std::vector<double> boundaries;   // bucketize: strictly increasing, finite
  std::vector<std::string> values;  // vocabulary: distinct, non-empty
  int64_t unknown_index = 0;        // vocabulary: the result for a string not in `values`
};

// The value a chain produced. `i64` is meaningful when the chain's output()
// is kInt64 (then f64 holds the same number as a double), `f64` always.
struct TransformResult {
  double f64 = 0;
  int64_t i64 = 0;
};

// Why apply() refused a value. `problem` is static text; str() formats it
// (only on the reject path, where allocating is fine).
struct TransformFailure {
  size_t step = 0;  // index of the step that refused
  TransformKind kind = TransformKind::kLog1p;
  const char* problem = "";     // e.g. "needs an input > -1"
  double input = 0;             // that step's input
  bool input_is_number = true;  // false: the problem is the input's type

  // e.g. "transform[1] (log1p) needs an input > -1, got -3"
  std::string str() const;
};

class TransformChain {
 public:
  TransformChain() = default;

  // Parses the `transform:` list at `path` (e.g. "tables[0].fields[2].transform").
  // Throws ConfigError whose message starts with the key path of the bad
  // step or parameter, e.g. "tables[0].fields[2].transform[1].standardize.std: must be > 0".
  static TransformChain parse(const YAML::Node& node, const std::string& path);
  // Same, from YAML text (tests).
  static TransformChain parse_yaml(std::string_view yaml, const std::string& path = "transform");

  bool empty() const noexcept { return steps_.empty(); }
  size_t size() const noexcept { return steps_.size(); }
  const std::vector<TransformStep>& steps() const noexcept { return steps_; }
  // True when the chain starts with a vocabulary: its input is a JSON string.
  bool string_input() const noexcept { return !steps_.empty() && steps_.front().kind == TransformKind::kVocabulary; }
  TransformOutput output() const noexcept;
  // "clip, log1p": the step names, for messages.
  std::string describe() const;

  // Hot path (consumer thread): never allocates, never throws. Return false
  // and fill `*why` when a step refuses the value. apply(double) on a chain
  // that starts with a vocabulary, and apply(string_view) on one that does
  // not, fail as a type problem (the decoder checks the JSON type first).
  bool apply(double x, TransformResult* out, TransformFailure* why) const noexcept;
  bool apply(std::string_view s, TransformResult* out, TransformFailure* why) const noexcept;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };

  // Runs steps [first, size) on x; `int_result` is the current value as an
  // exact integer when the previous step produced one.
  bool run(size_t first, double x, int64_t int_result, TransformResult* out, TransformFailure* why) const noexcept;
  int64_t vocabulary_index(std::string_view s) const noexcept;

  std::vector<TransformStep> steps_;
  // Vocabulary lookup for long lists (short ones are scanned): value -> index.
  std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>> vocabulary_;
};

}  // namespace larder::sidecar
