// Unit tests of ingest transforms: every step against hand-computed values,
// output types, domain errors, no allocation when applied, and every
// parameter error with its key path. No broker.
#include "config/transform.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "alloc_count.h"
#include "config/config_error.h"

namespace larder::sidecar {
namespace {

TransformChain chain(const std::string& yaml) { return TransformChain::parse_yaml(yaml, "t"); }

double apply(const TransformChain& c, double x) {
  TransformResult r;
  TransformFailure why;
  EXPECT_TRUE(c.apply(x, &r, &why)) << x << ": " << why.str();
  return r.f64;
}

int64_t apply_int(const TransformChain& c, double x) {
  TransformResult r;
  TransformFailure why;
  EXPECT_TRUE(c.apply(x, &r, &why)) << x << ": " << why.str();
  EXPECT_EQ(r.f64, static_cast<double>(r.i64));
  return r.i64;
}

int64_t lookup(const TransformChain& c, std::string_view s) {
  TransformResult r;
  TransformFailure why;
  EXPECT_TRUE(c.apply(s, &r, &why)) << s << ": " << why.str();
  return r.i64;
}

// The failure of applying `x`; fails the test if it succeeds.
TransformFailure refused(const TransformChain& c, double x) {
  TransformResult r;
  TransformFailure why;
  EXPECT_FALSE(c.apply(x, &r, &why)) << x << " gave " << r.f64;
  return why;
}

void expect_error(const std::string& yaml, const std::string& path, const std::string& fragment = "") {
  try {
    TransformChain::parse_yaml(yaml, "t");
    ADD_FAILURE() << "accepted: " << yaml;
  } catch (const ConfigError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind(path + ": ", 0), 0u) << "message \"" << msg << "\" does not start with \"" << path << ": \"";
    EXPECT_NE(msg.find(fragment), std::string::npos) << msg;
  }
}

TEST(Transform, Log1p) {
  const TransformChain c = chain("[log1p]");
  EXPECT_EQ(c.output(), TransformOutput::kFloat64);
  EXPECT_EQ(apply(c, 0), 0.0);
  EXPECT_DOUBLE_EQ(apply(c, 99), 4.605170185988092);  // ln(100)
  EXPECT_DOUBLE_EQ(apply(c, -0.5), -0.6931471805599453);
  EXPECT_DOUBLE_EQ(apply(c, 1e-10), 9.9999999995e-11);  // exact near 0, where log(1 + x) is not
  TransformFailure why = refused(c, -1);                // log1p(-1) = -inf
  EXPECT_EQ(why.step, 0u);
  EXPECT_EQ(why.kind, TransformKind::kLog1p);
  EXPECT_EQ(why.str(), "transform[0] (log1p) needs an input > -1, got -1");
  refused(c, -2);
  refused(c, std::nan(""));
  // The bare name and the mapping spelling are the same step.
  EXPECT_EQ(chain("[{log1p: {}}]").size(), 1u);
  EXPECT_EQ(chain("[{log1p: null}]").size(), 1u);
}

TEST(Transform, Clip) {
  const TransformChain both = chain("[{clip: {min: 0, max: 10}}]");
  EXPECT_EQ(apply(both, -5), 0.0);
  EXPECT_EQ(apply(both, 5), 5.0);
  EXPECT_EQ(apply(both, 15), 10.0);
  EXPECT_EQ(apply(both, 10), 10.0);
  const TransformChain low = chain("[{clip: {min: -1.5}}]");
  EXPECT_EQ(apply(low, -3), -1.5);
  EXPECT_EQ(apply(low, 1e300), 1e300);
  const TransformChain high = chain("[{clip: {max: 1}}]");
  EXPECT_EQ(apply(high, -1e300), -1e300);
  EXPECT_EQ(apply(high, 2), 1.0);
  EXPECT_EQ(apply(chain("[{clip: {min: 3, max: 3}}]"), 7), 3.0);  // min == max is allowed
}

TEST(Transform, Standardize) {
  const TransformChain c = chain("[{standardize: {mean: 10, std: 2}}]");
  EXPECT_EQ(apply(c, 14), 2.0);
  EXPECT_EQ(apply(c, 10), 0.0);
  EXPECT_EQ(apply(c, 7), -1.5);
  // A result beyond a double is refused, not stored as infinity.
  const TransformChain tiny = chain("[{standardize: {mean: 0, std: 1e-300}}]");
  const TransformFailure why = refused(tiny, 1e300);
  EXPECT_EQ(why.kind, TransformKind::kStandardize);
  EXPECT_EQ(why.str(), "transform[0] (standardize) gives a non-finite value, got 1e+300");
}

TEST(Transform, MinMax) {
  const TransformChain c = chain("[{minmax: {min: 2, max: 6}}]");
  EXPECT_EQ(apply(c, 4), 0.5);
  EXPECT_EQ(apply(c, 2), 0.0);
  EXPECT_EQ(apply(c, 6), 1.0);
  EXPECT_EQ(apply(c, 8), 1.5);  // not clipped
  EXPECT_EQ(apply(c, 0), -0.5);
  refused(chain("[{minmax: {min: 0, max: 1e-300}}]"), 1e300);
}

TEST(Transform, Bucketize) {
  const TransformChain c = chain("[{bucketize: {boundaries: [0, 10, 100]}}]");
  EXPECT_EQ(c.output(), TransformOutput::kInt64);
  EXPECT_EQ(apply_int(c, -1), 0);
  EXPECT_EQ(apply_int(c, 0), 1);  // a value equal to a boundary is counted
  EXPECT_EQ(apply_int(c, 9.99), 1);
  EXPECT_EQ(apply_int(c, 10), 2);
  EXPECT_EQ(apply_int(c, 99.5), 2);
  EXPECT_EQ(apply_int(c, 100), 3);
  EXPECT_EQ(apply_int(c, 1e300), 3);
  EXPECT_EQ(apply_int(chain("[{bucketize: {boundaries: [-0.5]}}]"), -0.5), 1);
}

TEST(Transform, Vocabulary) {
  const TransformChain c = chain("[{vocabulary: {values: [US, DE, FR]}}]");
  EXPECT_TRUE(c.string_input());
  EXPECT_EQ(c.output(), TransformOutput::kInt64);
  EXPECT_EQ(lookup(c, "US"), 1);
  EXPECT_EQ(lookup(c, "DE"), 2);
  EXPECT_EQ(lookup(c, "FR"), 3);
  EXPECT_EQ(lookup(c, "XX"), 0);  // 0 is reserved for unknown values
  EXPECT_EQ(lookup(c, ""), 0);
  EXPECT_EQ(lookup(c, "us"), 0);  // exact bytes
  const TransformChain other = chain("[{vocabulary: {values: [a, b], unknown_index: -1}}]");
  EXPECT_EQ(lookup(other, "b"), 2);
  EXPECT_EQ(lookup(other, "c"), -1);
  const TransformChain huge = chain("[{vocabulary: {values: [a], unknown_index: 9223372036854775807}}]");
  EXPECT_EQ(lookup(huge, "z"), INT64_MAX);  // exact, not through a double
  // Long vocabularies are looked up in a map: same results.
  std::string values;
  for (int i = 0; i < 40; ++i) values += (i ? "," : "") + std::string("v") + std::to_string(i);
  const TransformChain big = chain("[{vocabulary: {values: [" + values + "], unknown_index: 99}}]");
  EXPECT_EQ(lookup(big, "v0"), 1);
  EXPECT_EQ(lookup(big, "v7"), 8);
  EXPECT_EQ(lookup(big, "v39"), 40);
  EXPECT_EQ(lookup(big, "v40"), 99);
  // A vocabulary takes strings, the other steps numbers.
  TransformResult r;
  TransformFailure why;
  EXPECT_FALSE(c.apply(1.0, &r, &why));
  EXPECT_FALSE(why.input_is_number);
  EXPECT_EQ(why.str(), "transform[0] (vocabulary) takes a string, not a number");
  EXPECT_FALSE(chain("[log1p]").apply(std::string_view("1"), &r, &why));
}

TEST(Transform, Chains) {
  const TransformChain c = chain("[{clip: {min: 0, max: 10000}}, log1p]");
  EXPECT_EQ(c.describe(), "clip, log1p");
  EXPECT_EQ(apply(c, -5), 0.0);                          // clipped to 0, log1p(0)
  EXPECT_DOUBLE_EQ(apply(c, 9999), 9.210340371976184);   // ln(10000)
  EXPECT_DOUBLE_EQ(apply(c, 50000), 9.210440366976517);  // ln(10001)
  // The failing step is named by its index in the chain.
  const TransformFailure why = refused(chain("[{standardize: {mean: 5, std: 1}}, log1p]"), 3);
  EXPECT_EQ(why.step, 1u);
  EXPECT_EQ(why.str(), "transform[1] (log1p) needs an input > -1, got -2");
  // An integer step followed by a scaling step gives a float64.
  const TransformChain scaled = chain("[{bucketize: {boundaries: [1, 2, 3]}}, {minmax: {min: 0, max: 3}}]");
  EXPECT_EQ(scaled.output(), TransformOutput::kFloat64);
  EXPECT_DOUBLE_EQ(apply(scaled, 2.5), 2.0 / 3.0);
  const TransformChain vocab = chain("[{vocabulary: {values: [a, b, c, d]}}, {standardize: {mean: 2, std: 4}}]");
  EXPECT_EQ(vocab.output(), TransformOutput::kFloat64);
  TransformResult r;
  TransformFailure f;
  ASSERT_TRUE(vocab.apply(std::string_view("d"), &r, &f));
  EXPECT_EQ(r.f64, 0.5);  // (4 - 2) / 4
  const TransformChain bucket_last = chain("[log1p, {bucketize: {boundaries: [1, 2]}}]");
  EXPECT_EQ(bucket_last.output(), TransformOutput::kInt64);
  EXPECT_EQ(apply_int(bucket_last, 2), 1);  // log1p(2) = 1.0986: one boundary <= it
  EXPECT_EQ(apply_int(bucket_last, 7), 2);  // log1p(7) = 2.0794
  EXPECT_TRUE(chain("[]").empty());
}

TEST(Transform, ApplyNeverAllocates) {
  std::string values;
  for (int i = 0; i < 40; ++i) values += (i ? "," : "") + std::string("value-number-") + std::to_string(i);
  const TransformChain vocab = chain("[{vocabulary: {values: [" + values + "]}}, log1p]");
  const TransformChain numeric = chain(
      "[{clip: {min: 0}}, log1p, {standardize: {mean: 1, std: 2}}, {minmax: {min: -1, max: 1}}, "
      "{bucketize: {boundaries: [0, 0.5, 1]}}]");
  const TransformChain log = chain("[log1p]");
  const std::string key = "value-number-17-but-a-much-longer-string-than-sso";
  TransformResult r;
  TransformFailure why;
  {  // the counter sees allocations at all
    const uint64_t start = test::allocations();
    const std::string heap(100, 'x');
    ASSERT_GT(test::allocations(), start) << heap;
  }
  const uint64_t before = test::allocations();
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(vocab.apply(std::string_view(key).substr(0, 16), &r, &why));
    ASSERT_TRUE(vocab.apply(std::string_view(key), &r, &why));
    ASSERT_TRUE(numeric.apply(i * 0.37, &r, &why));
    ASSERT_FALSE(log.apply(-2.0, &r, &why));  // refusing does not allocate either
  }
  EXPECT_EQ(test::allocations(), before);
}

// Every parameter error, with the key path of the bad step or parameter.
TEST(Transform, ParameterErrors) {
  expect_error("log1p", "t", "expected a list of steps");
  expect_error("{log1p: {}}", "t", "expected a list of steps");
  expect_error("[nope]", "t[0]", "unknown step \"nope\" (expected log1p, clip, standardize");
  expect_error("[log1p, {nope: {}}]", "t[1]", "unknown step \"nope\"");
  expect_error("[clip]", "t[0]", "clip needs parameters, e.g. {clip:");
  expect_error("[vocabulary]", "t[0]", "vocabulary needs parameters");
  expect_error("[{clip: {min: 0}, log1p: null}]", "t[0]", "a mapping with one key");
  expect_error("[[log1p]]", "t[0]", "expected a step");
  expect_error("[{log1p: {base: 2}}]", "t[0].log1p", "takes no parameters");
  expect_error("[{log1p: 2}]", "t[0].log1p", "takes no parameters");

  expect_error("[{clip: {}}]", "t[0].clip", "needs min, max or both");
  expect_error("[{clip: null}]", "t[0].clip", "needs min, max or both");
  expect_error("[{clip: 5}]", "t[0].clip", "expected a mapping");
  expect_error("[{clip: {min: 2, max: 1}}]", "t[0].clip.max", "must be >= min");
  expect_error("[{clip: {min: abc}}]", "t[0].clip.min", "expected a finite number");
  expect_error("[{clip: {max: .inf}}]", "t[0].clip.max", "expected a finite number");
  expect_error("[{clip: {lo: 1}}]", "t[0].clip.lo", "unknown key (expected one of: min, max)");

  expect_error("[{standardize: {std: 1}}]", "t[0].standardize.mean", "required");
  expect_error("[{standardize: {mean: 1}}]", "t[0].standardize.std", "required");
  expect_error("[log1p, {standardize: {mean: 0, std: 0}}]", "t[1].standardize.std", "must be > 0");
  expect_error("[{standardize: {mean: 0, std: -1}}]", "t[0].standardize.std", "must be > 0");
  expect_error("[{standardize: {mean: 0, std: .inf}}]", "t[0].standardize.std", "finite");
  expect_error("[{standardize: {mean: .nan, std: 1}}]", "t[0].standardize.mean", "finite");
  expect_error("[{standardize: {mean: 0, std: 1, clip: 2}}]", "t[0].standardize.clip", "unknown key");

  expect_error("[{minmax: {max: 1}}]", "t[0].minmax.min", "required");
  expect_error("[{minmax: {min: 1}}]", "t[0].minmax.max", "required");
  expect_error("[{minmax: {min: 1, max: 1}}]", "t[0].minmax.max", "must be > min");
  expect_error("[{minmax: {min: 1, max: 0}}]", "t[0].minmax.max", "must be > min");
  expect_error("[{minmax: {min: -1e308, max: 1e308}}]", "t[0].minmax", "max - min");

  expect_error("[{bucketize: {}}]", "t[0].bucketize.boundaries", "required");
  expect_error("[{bucketize: {boundaries: []}}]", "t[0].bucketize.boundaries", "at least one");
  expect_error("[{bucketize: {boundaries: 5}}]", "t[0].bucketize.boundaries", "expected a list");
  expect_error("[{bucketize: {boundaries: [1, 1]}}]", "t[0].bucketize.boundaries[1]", "strictly increasing");
  expect_error("[{bucketize: {boundaries: [0, 2, 1]}}]", "t[0].bucketize.boundaries[2]", "strictly increasing");
  expect_error("[{bucketize: {boundaries: [1, x]}}]", "t[0].bucketize.boundaries[1]", "expected a finite number");
  expect_error("[{bucketize: {boundaries: [1, .inf]}}]", "t[0].bucketize.boundaries[1]", "finite");
  expect_error("[{bucketize: {boundaries: [[1]]}}]", "t[0].bucketize.boundaries[0]", "finite");

  expect_error("[{vocabulary: {}}]", "t[0].vocabulary.values", "required");
  expect_error("[{vocabulary: {values: []}}]", "t[0].vocabulary.values", "at least one");
  expect_error("[{vocabulary: {values: [US, \"\"]}}]", "t[0].vocabulary.values[1]", "must not be empty");
  expect_error("[{vocabulary: {values: [US, DE, US]}}]", "t[0].vocabulary.values[2]",
               "duplicate value \"US\" (also values[0])");
  expect_error("[{vocabulary: {values: [US, [DE]]}}]", "t[0].vocabulary.values[1]", "expected a string");
  expect_error("[{vocabulary: {values: [US, ~]}}]", "t[0].vocabulary.values[1]", "expected a string");
  expect_error("[{vocabulary: {values: [US], unknown_index: 1.5}}]", "t[0].vocabulary.unknown_index",
               "expected an integer");
  expect_error("[{vocabulary: {values: [US], unknown_index: 9223372036854775808}}]", "t[0].vocabulary.unknown_index",
               "expected an integer");
  expect_error("[log1p, {vocabulary: {values: [US]}}]", "t[1].vocabulary", "must be the first step");
  expect_error("[{vocabulary: {values: [US], default: 3}}]", "t[0].vocabulary.default", "unknown key");
}

TEST(Transform, ImputeReplacesNullAndTheMissingMarker) {
  const TransformChain c = chain("[{impute: {value: 2.5}}, {standardize: {mean: 1, std: 2}}]");
  EXPECT_TRUE(c.takes_null());
  EXPECT_EQ(c.input(), TransformInput::kNumber);
  EXPECT_EQ(apply(c, 3), 1.0);
  TransformResult r;
  TransformFailure why;
  ASSERT_TRUE(c.apply_null(&r, &why)) << why.str();
  EXPECT_EQ(r.f64, (2.5 - 1) / 2);
  const TransformChain marker = chain("[{impute: {value: 7, missing: -1}}]");
  EXPECT_EQ(apply(marker, -1), 7.0);
  EXPECT_EQ(apply(marker, -2), -2.0);
  // A chain without an impute or a category step takes no null.
  EXPECT_FALSE(chain("[log1p]").takes_null());
  EXPECT_FALSE(chain("[log1p]").apply_null(&r, &why));
  // A string impute in front of string categories.
  const TransformChain s = chain("[{impute: {value: DE, missing: \"?\"}}, {ordinal: {categories: [DE, US]}}]");
  EXPECT_TRUE(s.string_input());
  ASSERT_TRUE(s.apply_null(&r, &why)) << why.str();
  EXPECT_EQ(r.i64, 0);
  EXPECT_EQ(lookup(s, "?"), 0);
  EXPECT_EQ(lookup(s, "US"), 1);
}

TEST(Transform, AffineMultipliesThenAdds) {
  const TransformChain c = chain("[{affine: {scale: 0.1, offset: -0.3}}]");
  for (double x : {0.0, 1.0, 3.0, -7.25, 1e12}) EXPECT_EQ(apply(c, x), x * 0.1 + -0.3);
  refused(chain("[{affine: {scale: 1e300, offset: 0}}]"), 1e300);  // non-finite
}

TEST(Transform, OrdinalOfStringsAndNumbers) {
  const TransformChain s = chain("[{ordinal: {categories: [b, a, \"3\"], unknown_value: -1}}]");
  EXPECT_EQ(s.output(), TransformOutput::kInt64);
  EXPECT_EQ(lookup(s, "b"), 0);
  EXPECT_EQ(lookup(s, "a"), 1);
  EXPECT_EQ(lookup(s, "3"), 2);  // quoted: a string category
  EXPECT_EQ(lookup(s, "zz"), -1);
  TransformResult r;
  TransformFailure why;
  ASSERT_TRUE(s.apply_null(&r, &why));  // null not among the categories: unknown
  EXPECT_EQ(r.i64, -1);

  const TransformChain refusing = chain("[{ordinal: {categories: [b, a]}}]");
  EXPECT_FALSE(refusing.apply("c", &r, &why));
  EXPECT_EQ(why.str(), "transform[0] (ordinal) got a value that is not one of its categories");
  EXPECT_FALSE(refusing.apply_null(&r, &why));

  const TransformChain n = chain("[{ordinal: {categories: [1.5, 3, ~], unknown_value: 9, missing_value: -2}}]");
  EXPECT_EQ(n.input(), TransformInput::kNumber);
  EXPECT_EQ(apply_int(n, 1.5), 0);
  EXPECT_EQ(apply_int(n, 3), 1);
  EXPECT_EQ(apply_int(n, 4), 9);
  ASSERT_TRUE(n.apply_null(&r, &why));
  EXPECT_EQ(r.i64, -2);
  // Without missing_value, null is its own category's position.
  const TransformChain p = chain("[{ordinal: {categories: [1, ~]}}]");
  ASSERT_TRUE(p.apply_null(&r, &why));
  EXPECT_EQ(r.i64, 1);
  // A long list is looked up in a map; the positions are the same.
  std::string many = "[{ordinal: {categories: [";
  for (int i = 0; i < 40; ++i) many += (i ? ", c" : "c") + std::to_string(i);
  const TransformChain m = chain(many + "], unknown_value: -1}}]");
  EXPECT_EQ(lookup(m, "c0"), 0);
  EXPECT_EQ(lookup(m, "c39"), 39);
  EXPECT_EQ(lookup(m, "c40"), -1);
  // Later steps take the position.
  EXPECT_EQ(apply(chain("[{ordinal: {categories: [5, 6]}}, {standardize: {mean: 0.5, std: 0.5}}]"), 6), 1.0);
}

std::vector<double> one_hot(const TransformChain& c, std::string_view s) {
  std::vector<double> v(c.output_dims(), -1);
  TransformResult r;
  r.vector = v.data();
  TransformFailure why;
  EXPECT_TRUE(c.apply(s, &r, &why)) << s << ": " << why.str();
  return v;
}

TEST(Transform, OneHotVectorAndBool) {
  const TransformChain c = chain("[{one_hot: {categories: [a, b, c], handle_unknown: ignore}}]");
  EXPECT_EQ(c.output(), TransformOutput::kVector);
  ASSERT_EQ(c.output_dims(), 3u);
  EXPECT_EQ(one_hot(c, "a"), (std::vector<double>{1, 0, 0}));
  EXPECT_EQ(one_hot(c, "c"), (std::vector<double>{0, 0, 1}));
  EXPECT_EQ(one_hot(c, "zz"), (std::vector<double>{0, 0, 0}));

  const TransformChain dropped = chain("[{one_hot: {categories: [a, b, c], drop: 1}}]");
  ASSERT_EQ(dropped.output_dims(), 2u);
  EXPECT_EQ(one_hot(dropped, "a"), (std::vector<double>{1, 0}));
  EXPECT_EQ(one_hot(dropped, "b"), (std::vector<double>{0, 0}));
  EXPECT_EQ(one_hot(dropped, "c"), (std::vector<double>{0, 1}));
  std::vector<double> v(2);
  TransformResult r;
  r.vector = v.data();
  TransformFailure why;
  EXPECT_FALSE(dropped.apply("d", &r, &why));  // handle_unknown defaults to error, as in sklearn

  const TransformChain pick = chain("[{one_hot: {categories: [a, ~, c], index: 1}}]");
  EXPECT_EQ(pick.output(), TransformOutput::kBool);
  ASSERT_TRUE(pick.apply_null(&r, &why));
  EXPECT_EQ(r.i64, 1);
  ASSERT_TRUE(pick.apply("a", &r, &why));
  EXPECT_EQ(r.i64, 0);

  // After a bucketize (KBinsDiscretizer's one-hot): numeric categories.
  const TransformChain bins = chain("[{bucketize: {boundaries: [0, 10]}}, {one_hot: {categories: [0, 1, 2]}}]");
  EXPECT_EQ(bins.input(), TransformInput::kNumber);
  std::vector<double> b(3);
  r.vector = b.data();
  ASSERT_TRUE(bins.apply(10.0, &r, &why));  // an edge belongs to the bin on its right
  EXPECT_EQ(b, (std::vector<double>{0, 0, 1}));
}

TEST(Transform, ProjectSubtractsTheMeanThenMultiplies) {
  const TransformChain c =
      chain("[{project: {components: [[0.6, 0.8], [-0.8, 0.6]], mean: [1, 2], divide: [2, 0.5]}}]");
  EXPECT_EQ(c.input(), TransformInput::kVector);
  EXPECT_EQ(c.input_dims(), 2u);
  ASSERT_EQ(c.output_dims(), 2u);
  const double x[2] = {4, -1};
  double y[2];
  TransformResult r;
  r.vector = y;
  TransformFailure why;
  ASSERT_TRUE(c.apply(x, 2, &r, &why)) << why.str();
  EXPECT_EQ(y[0], ((4 - 1) * 0.6 + (-1 - 2) * 0.8) / 2);
  EXPECT_EQ(y[1], ((4 - 1) * -0.8 + (-1 - 2) * 0.6) / 0.5);
  EXPECT_FALSE(c.apply(x, 1, &r, &why));  // wrong length
  EXPECT_FALSE(c.apply(3.0, &r, &why));   // a number
}

TEST(Transform, NewStepsNeverAllocate) {
  const TransformChain s = chain("[{impute: {value: a}}, {one_hot: {categories: [a, b, c, d, e, f, g, h, i, j]}}]");
  const TransformChain p = chain("[{project: {components: [[1, 2], [3, 4]], mean: [0.5, 0.5]}}]");
  double out[10];
  const double x[2] = {1, 2};
  TransformResult r;
  r.vector = out;
  TransformFailure why;
  const uint64_t before = test::allocations();
  for (int i = 0; i < 100; ++i) {
    EXPECT_TRUE(s.apply("j", &r, &why));
    EXPECT_TRUE(s.apply_null(&r, &why));
    EXPECT_TRUE(p.apply(x, 2, &r, &why));
  }
  EXPECT_EQ(test::allocations(), before);
}

TEST(Transform, NewStepParameterErrors) {
  expect_error("[log1p, {impute: {value: 1}}]", "t[1].impute", "must be the first step");
  expect_error("[{impute: {}}]", "t[0].impute.value", "required");
  expect_error("[{impute: {value: x}}, log1p]", "t[0].impute.value", "expected a finite number");
  expect_error("[{affine: {scale: 1}}]", "t[0].affine.offset", "required");
  expect_error("[{ordinal: {categories: [a, 1]}}]", "t[0].ordinal.categories[1]", "all strings or all numbers");
  expect_error("[{ordinal: {categories: [a, a]}}]", "t[0].ordinal.categories[1]", "duplicate category");
  expect_error("[{ordinal: {categories: [1, 1.0]}}]", "t[0].ordinal.categories[1]", "duplicate category");
  expect_error("[{ordinal: {categories: [~, ~]}}]", "t[0].ordinal.categories[1]", "a second null");
  expect_error("[{ordinal: {categories: [a], missing_value: 1}}]", "t[0].ordinal.missing_value", "needs a null");
  expect_error("[log1p, {ordinal: {categories: [a]}}]", "t[1].ordinal", "must be the first step");
  expect_error("[{one_hot: {categories: [a], handle_unknown: maybe}}]", "t[0].one_hot.handle_unknown", "error or");
  expect_error("[{one_hot: {categories: [a, b], drop: 2}}]", "t[0].one_hot.drop", "");
  expect_error("[{one_hot: {categories: [a, b], drop: 1, index: 1}}]", "t[0].one_hot.index", "dropped");
  expect_error("[{one_hot: {categories: [a, b]}}, log1p]", "t[1]", "last step");
  expect_error("[{project: {components: [[1, 2], [3]]}}]", "t[0].project.components[1]", "the first row has 2");
  expect_error("[{project: {components: [[1, 2]], mean: [1]}}]", "t[0].project.mean", "2 columns");
  expect_error("[{project: {components: [[1, 2]], divide: [0]}}]", "t[0].project.divide[0]", "must be > 0");
  expect_error("[{project: {components: [[1]]}}, log1p]", "t[1]", "only step");
}

}  // namespace
}  // namespace larder::sidecar
