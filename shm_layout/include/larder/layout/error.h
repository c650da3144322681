// Errors of the cold paths (create, open, resolve). The read path never throws;
// it returns a Status (see larder/client.h).
#pragma once

#include <stdexcept>
#include <string>

namespace larder {

enum class ErrorCode : int {
  kInvalidArgument = 1,   // a bad name, schema, option or key
  kNotFound = 2,          // no such segment, table or field
  kPermissionDenied = 3,  // the file mode or the mount forbids the access
  kVersionMismatch = 4,   // another layout version or ABI signature
  kSchemaMismatch = 5,    // another schema fingerprint, or a field of another type
  kNotReady = 6,          // the segment is still being created, or was retired
  kCorrupt = 7,           // the header or a descriptor is inconsistent
  kWriterLocked = 8,      // another writer holds the segment
  kNoSpace = 9,           // the directory cannot hold the segment
  kSystem = 10,           // any other failed system call (message has errno text)
};

const char* error_code_name(ErrorCode code);

// An error that names the thing, the problem and, where there is one, the fix.
class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace larder
