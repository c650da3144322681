// Names of the driver's column types (see driver.h). Any thread.
#include "consume/sql/driver.h"

namespace larder::sidecar::sql {

const char* to_string(ColumnType type) noexcept {
  switch (type) {
    case ColumnType::kInt: return "integer";
    case ColumnType::kFloat: return "floating-point";
    case ColumnType::kBool: return "boolean";
    case ColumnType::kText: return "text";
    case ColumnType::kBytes: return "bytes";
    case ColumnType::kTimestamp: return "timestamp";
    case ColumnType::kOther: return "other";
  }
  return "?";
}

}  // namespace larder::sidecar::sql
