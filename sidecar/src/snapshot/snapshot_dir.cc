// snapshot.dir listing and pruning (see snapshot_dir.h).
#include "snapshot/snapshot_dir.h"

#include <fmt/format.h>

#include <algorithm>
#include <filesystem>
#include <system_error>

namespace larder::sidecar {

namespace fs = std::filesystem;

std::string snapshot_path(const std::string& dir, std::string_view segment, int64_t unix_ms) {
  return fmt::format("{}/{}-{}{}", dir, segment, unix_ms, kSnapshotSuffix);
}

std::vector<SnapshotEntry> list_snapshots(const std::string& dir, std::string_view segment) {
  std::vector<SnapshotEntry> out;
  std::error_code ec;
  if (!fs::exists(dir, ec)) return out;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    // segment, '-', 1..19 digits, suffix.
    if (name.size() <= segment.size() + 1 + kSnapshotSuffix.size()) continue;
    if (!name.starts_with(segment) || name[segment.size()] != '-' || !name.ends_with(kSnapshotSuffix)) continue;
    const std::string_view digits =
        std::string_view(name).substr(segment.size() + 1, name.size() - segment.size() - 1 - kSnapshotSuffix.size());
    if (digits.empty() || digits.size() > 18) continue;
    int64_t ms = 0;
    bool ok = true;
    for (char c : digits) {
      ok = ok && c >= '0' && c <= '9';
      ms = ms * 10 + (c - '0');
    }
    if (!ok || !e.is_regular_file(ec)) continue;
    out.push_back({e.path().string(), ms});
  }
  std::sort(out.begin(), out.end(), [](const SnapshotEntry& a, const SnapshotEntry& b) {
    return a.unix_ms != b.unix_ms ? a.unix_ms > b.unix_ms : a.path > b.path;
  });
  return out;
}

void ensure_snapshot_dir(const std::string& dir) {
  std::error_code ec;
  if (fs::is_directory(dir, ec)) return;
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
}

std::vector<std::string> prune_snapshots(const std::string& dir, std::string_view segment, uint32_t keep) {
  std::vector<std::string> removed;
  const std::vector<SnapshotEntry> all = list_snapshots(dir, segment);
  for (size_t i = keep; i < all.size(); ++i) {
    std::error_code ec;
    if (fs::remove(all[i].path, ec)) removed.push_back(all[i].path);
  }
  return removed;
}

}  // namespace larder::sidecar
