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
//   impute: {value, missing}        JSON null (and `missing`, when given) -> value;
//                                   must be the first step
//   affine: {scale, offset}         x * scale + offset (in that order: MinMaxScaler's)
//   ordinal: {categories: [...], unknown_value, missing_value}
//                                   categories[i] -> i; a value not in the list ->
//                                   unknown_value (absent: refused); null ->
//                                   missing_value (absent: null is unknown)
//   one_hot: {categories: [...], handle_unknown: error|ignore, drop, index}
//                                   a float32 vector of len(categories) with a 1 at the
//                                   category's position (0s for an ignored unknown),
//                                   without position `drop` when given; with `index`,
//                                   a bool: is the value categories[index]; last step
//   project: {components: [[...]], mean: [...], divide: [...]}
//                                   a vector x -> ((x - mean) . components[j]) / divide[j]
//                                   for each row j (PCA's transform); the only step
// Categories are all strings (quoted in YAML when they look like numbers) or
// all numbers, plus at most one null, the category of a missing value. A
// string-input step (vocabulary, ordinal/one_hot of strings) comes first, or
// right after an impute.
// A chain's output is int64 when its last step is bucketize, vocabulary or
// ordinal, bool for one_hot with index, a vector for one_hot and project,
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

enum class TransformKind : uint8_t {
  kLog1p,
  kClip,
  kStandardize,
  kMinMax,
  kBucketize,
  kVocabulary,
  kImpute,
  kAffine,
  kOrdinal,
  kOneHot,
  kProject,
};

// "log1p", "clip", ... (the config spelling). Never null.
const char* transform_kind_name(TransformKind kind) noexcept;

enum class TransformOutput : uint8_t { kFloat64, kInt64, kBool, kVector };
// The JSON value a chain reads.
enum class TransformInput : uint8_t { kNumber, kString, kVector };

struct TransformStep {
  TransformKind kind = TransformKind::kLog1p;
  double lo = 0;                    // clip: min (-inf when absent); standardize: mean; minmax: min; affine: scale;
                                    // impute: the value (number input)
  double hi = 0;                    // clip: max (+inf when absent); standardize: std; minmax: max; affine: offset;
                                    // impute: the `missing` number
  std::vector<double> boundaries;   // bucketize: strictly increasing, finite; ordinal/one_hot: numeric categories
  std::vector<std::string> values;  // vocabulary, ordinal/one_hot: string categories, distinct
  int64_t unknown_index = 0;        // vocabulary: the result for a string not in `values`; ordinal: unknown_value
  bool string_categories = false;   // ordinal/one_hot: the categories are `values`, else `boundaries`
  bool unknown_refused = false;     // ordinal/one_hot: an unknown value is refused (sklearn's "error")
  int64_t null_category = -1;       // ordinal/one_hot: the category position of null, or -1
  bool has_missing_value = false;   // ordinal: null -> missing_index
  int64_t missing_index = 0;        // ordinal: missing_value
  int64_t drop = -1;                // one_hot: the category left out of the vector, or -1
  int64_t pick = -1;                // one_hot: `index` (bool output), or -1 (vector output)
  // impute: the value for a string input, and whether `missing` was given
  // (hi or missing_string holds it).
  std::string impute_string;
  bool has_missing = false;
  std::string missing_string;
  // project: components (rows x cols, row-major), mean (cols, empty: none)
  // and divide (rows, empty: none).
  size_t rows = 0;
  size_t cols = 0;
  std::vector<double> matrix;
  std::vector<double> mean;
  std::vector<double> divide;
};

// The value a chain produced. `i64` is meaningful when the chain's output()
// is kInt64 (then f64 holds the same number as a double), `f64` always.
// For a vector output the caller points `vector` at output_dims() doubles
// before apply(), which fills them.
struct TransformResult {
  double f64 = 0;
  int64_t i64 = 0;  // kInt64: the value; kBool: 0 or 1
  double* vector = nullptr;
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
  // True when the chain's input is a JSON string (it starts with a
  // vocabulary or string categories, maybe after an impute).
  bool string_input() const noexcept { return input_ == TransformInput::kString; }
  TransformInput input() const noexcept { return input_; }
  // The number of elements of a vector input (project), else 0.
  size_t input_dims() const noexcept { return input_ == TransformInput::kVector ? steps_.front().cols : 0; }
  // True when the chain takes a JSON null (a missing value): it starts with
  // an impute, or an ordinal/one_hot that maps null to a category, a
  // missing_value or its unknown handling.
  bool takes_null() const noexcept;
  TransformOutput output() const noexcept;
  // The number of elements of a vector output, else 0.
  size_t output_dims() const noexcept;
  // "clip, log1p": the step names, for messages.
  std::string describe() const;

  // Hot path (consumer thread): never allocates, never throws. Return false
  // and fill `*why` when a step refuses the value. apply(double) on a chain
  // that starts with a vocabulary, and apply(string_view) on one that does
  // not, fail as a type problem (the decoder checks the JSON type first).
  bool apply(double x, TransformResult* out, TransformFailure* why) const noexcept;
  bool apply(std::string_view s, TransformResult* out, TransformFailure* why) const noexcept;
  // A vector input of input_dims() elements (project).
  bool apply(const double* x, size_t n, TransformResult* out, TransformFailure* why) const noexcept;
  // A JSON null: a missing value (see takes_null()).
  bool apply_null(TransformResult* out, TransformFailure* why) const noexcept;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };

  // Runs steps [first, size) on x; `int_result` is the current value as an
  // exact integer when the previous step produced one.
  bool run(size_t first, double x, int64_t int_result, TransformResult* out, TransformFailure* why) const noexcept;
  // Runs step `i` (a category step) on category position `pos` (-1:
  // unknown), then the steps after it.
  bool category(size_t i, int64_t pos, TransformResult* out, TransformFailure* why) const noexcept;
  // The position of `s` in the string step's list, or -1.
  int64_t string_position(std::string_view s) const noexcept;
  size_t string_step() const noexcept { return steps_.front().kind == TransformKind::kImpute ? 1 : 0; }

  std::vector<TransformStep> steps_;
  TransformInput input_ = TransformInput::kNumber;
  // String lookup for long lists (short ones are scanned): value -> position.
  std::unordered_map<std::string, int64_t, StringHash, std::equal_to<>> vocabulary_;
};

}  // namespace larder::sidecar
