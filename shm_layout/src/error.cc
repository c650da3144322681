#include "larder/layout/error.h"

namespace larder {

const char* error_code_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kNotFound: return "not found";
    case ErrorCode::kPermissionDenied: return "permission denied";
    case ErrorCode::kVersionMismatch: return "version mismatch";
    case ErrorCode::kSchemaMismatch: return "schema mismatch";
    case ErrorCode::kNotReady: return "not ready";
    case ErrorCode::kCorrupt: return "corrupt segment";
    case ErrorCode::kWriterLocked: return "writer locked";
    case ErrorCode::kNoSpace: return "no space";
    case ErrorCode::kSystem: return "system error";
  }
  return "unknown error";
}

}  // namespace larder
