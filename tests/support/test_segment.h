// Helpers for tests that create segments: unique names, cleanup, schemas.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#include "larder/layout/schema.h"
#include "larder/writer/writer.h"

namespace larder::testing {

// A segment name unique to this process and call, removed on destruction.
class ScratchSegment {
 public:
  explicit ScratchSegment(std::string dir = "/dev/shm") : dir_(std::move(dir)) {
    static std::atomic<int> counter{0};
    name_ = "larder-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
  }
  ~ScratchSegment() { Writer::remove_segment(name_, dir_); }
  ScratchSegment(const ScratchSegment&) = delete;
  ScratchSegment& operator=(const ScratchSegment&) = delete;

  const std::string& name() const { return name_; }
  const std::string& dir() const { return dir_; }
  WriterOptions writer_options() const {
    WriterOptions o;
    o.dir = dir_;
    return o;
  }

 private:
  std::string dir_;
  std::string name_;
};

// A table of every field type, used across the tests.
inline layout::TableSpec every_type_table(const std::string& name = "users", uint64_t capacity = 1000,
                                          uint32_t dims = 8) {
  layout::TableSpec t;
  t.name = name;
  t.key_max_len = 32;
  t.capacity = capacity;
  t.fields = {
      {"clicks", layout::FieldType::kInt64, 1},
      {"spend", layout::FieldType::kFloat64, 1},
      {"ctr", layout::FieldType::kFloat32, 1},
      {"premium", layout::FieldType::kBool, 1},
      {"embedding", layout::FieldType::kFloat32Vector, dims},
      {"country", layout::FieldType::kString, 8},
  };
  return t;
}

inline layout::Schema one_table_schema(const layout::TableSpec& t) {
  layout::Schema s;
  s.tables.push_back(t);
  return s;
}

}  // namespace larder::testing
