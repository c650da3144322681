// larderctl's snapshot commands (snapshot, snapshot-info, fetch-snapshot):
// see snapshot_commands.cc. Each returns larderctl's exit code.
#pragma once

#include <string>
#include <string_view>

namespace larder::ctl {

// Exit codes shared with larderctl.cc.
// `s` as a JSON string literal, quoted and escaped.
std::string json_string(std::string_view s);

inline constexpr int kExitOk = 0;
inline constexpr int kExitProblems = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitOpen = 3;

// Copies segment `name` in `dir` (no writer may be attached) into a snapshot
// file at `file`, compressed at zstd `level`.
int cmd_snapshot(const std::string& dir, bool json, const std::string& name, const std::string& file, int level);

// Verifies a snapshot file completely and prints its header, the image's
// sync state, source id and positions, and its tables.
int cmd_snapshot_info(bool json, const std::string& file);

// GETs a snapshot from `url` (http or https), with `Authorization: Bearer`
// read from `token_file` when given, verifies it and renames it into `file`.
// `timeout_s` bounds the connection and every wait for more bytes.
int cmd_fetch_snapshot(bool json, const std::string& url, const std::string& file, const std::string& token_file,
                       double timeout_s);

}  // namespace larder::ctl
