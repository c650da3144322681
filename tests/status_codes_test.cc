// The codes that cross the C ABI agree everywhere they are written down: the
// C++ enums (larder::Status, larder::ErrorCode, layout::FieldType) and the
// constants of larder/larder.h. client_lib/python/tests/test_codes.py checks
// the Python package against the same C functions. Every code has exactly
// one name: non-empty, and no two codes share one.
//
// The tables below list every enumerator. A new enumerator must get a name
// (the name functions switch over the enum without a default, so -Wswitch
// asks for it); the count checks then find it missing here, and the C twin
// with it.
#include <gtest/gtest.h>

#include <climits>
#include <cstdint>
#include <iterator>
#include <set>
#include <string>

#include "larder/client.h"
#include "larder/larder.h"
#include "larder/layout/error.h"
#include "larder/layout/schema.h"

namespace larder {
namespace {

struct StatusTwin {
  Status status;
  int c_value;
  const char* c_name;
};
constexpr StatusTwin kStatusTwins[] = {
    {Status::kOk, LARDER_OK, "ok"},
    {Status::kNotFound, LARDER_NOT_FOUND, "not_found"},
    {Status::kStale, LARDER_STALE, "stale"},
    {Status::kBusy, LARDER_BUSY, "busy"},
    {Status::kInvalidKey, LARDER_INVALID_KEY, "invalid_key"},
    {Status::kCorrupt, LARDER_CORRUPT, "corrupt"},
};

struct ErrorTwin {
  ErrorCode code;
  int c_value;
  const char* c_name;
};
constexpr ErrorTwin kErrorTwins[] = {
    {ErrorCode::kInvalidArgument, LARDER_E_INVALID_ARGUMENT, "invalid_argument"},
    {ErrorCode::kNotFound, LARDER_E_NOT_FOUND, "not_found"},
    {ErrorCode::kPermissionDenied, LARDER_E_PERMISSION_DENIED, "permission_denied"},
    {ErrorCode::kVersionMismatch, LARDER_E_VERSION_MISMATCH, "version_mismatch"},
    {ErrorCode::kSchemaMismatch, LARDER_E_SCHEMA_MISMATCH, "schema_mismatch"},
    {ErrorCode::kNotReady, LARDER_E_NOT_READY, "not_ready"},
    {ErrorCode::kCorrupt, LARDER_E_CORRUPT, "corrupt"},
    {ErrorCode::kWriterLocked, LARDER_E_WRITER_LOCKED, "writer_locked"},
    {ErrorCode::kNoSpace, LARDER_E_NO_SPACE, "no_space"},
    {ErrorCode::kSystem, LARDER_E_SYSTEM, "system"},
};

struct FieldTypeTwin {
  FieldType type;
  int c_value;
};
constexpr FieldTypeTwin kFieldTypeTwins[] = {
    {FieldType::kInt64, LARDER_INT64},
    {FieldType::kFloat64, LARDER_FLOAT64},
    {FieldType::kFloat32, LARDER_FLOAT32},
    {FieldType::kBool, LARDER_BOOL},
    {FieldType::kFloat32Vector, LARDER_FLOAT32_VECTOR},
    {FieldType::kString, LARDER_STRING},
};

// Numbers to probe for names: every value of an 8-bit enum, a wide margin
// beyond the others, and the extremes of int.
template <class F>
int count_named(F&& has_name) {
  int named = 0;
  for (int v = -1024; v <= 1024; ++v) named += has_name(v) ? 1 : 0;
  for (int v : {INT_MIN, INT_MIN + 1, INT_MAX - 1, INT_MAX}) named += has_name(v) ? 1 : 0;
  return named;
}

bool named(const char* name, const char* unknown) { return name != nullptr && std::string(name) != unknown; }

TEST(StatusCodes, EveryReadStatusHasItsCTwin) {
  for (const StatusTwin& t : kStatusTwins) {
    SCOPED_TRACE(t.c_name);
    EXPECT_EQ(static_cast<int>(t.status), t.c_value);
    EXPECT_STREQ(status_name(t.status), t.c_name);
    EXPECT_STREQ(larder_status_name(t.c_value), t.c_name);
  }
  const int cpp_named =
      count_named([](int v) { return v >= 0 && v <= 0xff && named(status_name(static_cast<Status>(v)), "unknown"); });
  EXPECT_EQ(cpp_named, static_cast<int>(std::size(kStatusTwins))) << "a Status without a twin in this table";
  const int c_named = count_named([](int v) { return named(larder_status_name(v), "unknown"); });
  EXPECT_EQ(c_named, static_cast<int>(std::size(kStatusTwins))) << "a C read status without a twin";
}

TEST(StatusCodes, EveryErrorCodeHasItsCTwin) {
  EXPECT_EQ(LARDER_E_OK, 0);
  EXPECT_STREQ(larder_error_name(LARDER_E_OK), "ok");
  for (const ErrorTwin& t : kErrorTwins) {
    SCOPED_TRACE(t.c_name);
    EXPECT_EQ(static_cast<int>(t.code), t.c_value);
    EXPECT_STREQ(larder_error_name(t.c_value), t.c_name);
  }
  const int cpp_named =
      count_named([](int v) { return named(error_code_name(static_cast<ErrorCode>(v)), "unknown error"); });
  EXPECT_EQ(cpp_named, static_cast<int>(std::size(kErrorTwins))) << "an ErrorCode without a twin in this table";
  const int c_named = count_named([](int v) { return named(larder_error_name(v), "unknown"); });
  EXPECT_EQ(c_named, static_cast<int>(std::size(kErrorTwins)) + 1) << "a LARDER_E_* code without a twin";
}

TEST(StatusCodes, EveryFieldTypeHasItsCTwin) {
  for (const FieldTypeTwin& t : kFieldTypeTwins) {
    SCOPED_TRACE(layout::field_type_name(t.type));
    EXPECT_EQ(static_cast<int>(t.type), t.c_value);
  }
  const int cpp_named =
      count_named([](int v) { return v >= 0 && named(layout::field_type_name(static_cast<FieldType>(v)), "unknown"); });
  EXPECT_EQ(cpp_named, static_cast<int>(std::size(kFieldTypeTwins))) << "a FieldType without a twin in this table";
}

// rabbitmq-c's habit: a code is known by one message, and no two codes share
// one.
TEST(StatusCodes, EveryCodeHasOneDistinctMessage) {
  std::set<std::string> cpp_status, c_status, cpp_error, c_error;
  for (const StatusTwin& t : kStatusTwins) {
    EXPECT_STRNE(status_name(t.status), "");
    EXPECT_STRNE(larder_status_name(t.c_value), "");
    cpp_status.insert(status_name(t.status));
    c_status.insert(larder_status_name(t.c_value));
  }
  c_error.insert(larder_error_name(LARDER_E_OK));
  for (const ErrorTwin& t : kErrorTwins) {
    EXPECT_STRNE(error_code_name(t.code), "");
    EXPECT_STRNE(larder_error_name(t.c_value), "");
    cpp_error.insert(error_code_name(t.code));
    c_error.insert(larder_error_name(t.c_value));
  }
  EXPECT_EQ(cpp_status.size(), std::size(kStatusTwins));
  EXPECT_EQ(c_status.size(), std::size(kStatusTwins));
  EXPECT_EQ(cpp_error.size(), std::size(kErrorTwins));
  EXPECT_EQ(c_error.size(), std::size(kErrorTwins) + 1);
  EXPECT_EQ(cpp_error.count("unknown error"), 0u);
  EXPECT_EQ(c_error.count("unknown"), 0u);
  EXPECT_EQ(c_status.count("unknown"), 0u);
}

}  // namespace
}  // namespace larder
