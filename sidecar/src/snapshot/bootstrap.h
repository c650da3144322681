// Start-up: where the segment comes from (docs/operations.md, "New host").
//
//   --restore FILE            verify FILE, then replace the segment with it
//                             (even when one exists); any error: exit 5,
//                             the existing segment untouched
//   a segment exists          reopen it (its stored positions resume)
//   no segment:
//     bootstrap.restore FILE  restore FILE (any error: exit 5)
//     bootstrap.restore latest (default) and snapshot.dir set:
//                             the newest valid snapshot of the segment in
//                             snapshot.dir; an unusable one (corrupt,
//                             truncated, another schema or version) is logged
//                             as an error and the next older one tried
//     --bootstrap-from URL or bootstrap.peer:
//                             fetch the peer's GET /snapshot, verify, restore
//                             (any error: exit 5; an empty start would look
//                             complete when it is not)
//     else                    create an empty segment
//
// A restored segment is published in state CATCHING_UP (the image is patched
// before it is written, so no reader sees the image's own state); the
// consumer resumes from the positions inside it. Nothing here changes an
// existing segment unless the restore succeeds: Writer::restore builds the
// new one in a temporary file and renames it over the old one.
//
// Threads: main thread, before any other thread starts.
#pragma once

#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "config/config.h"
#include "config/http_url.h"
#include "larder/writer/writer.h"

namespace larder::sidecar {

// Exit codes of a failed start (main.cc documents them).
inline constexpr int kExitCannotOpen = 3;
inline constexpr int kExitCannotRestore = 5;

struct StartOptions {
  std::string restore_file;    // --restore FILE
  std::string bootstrap_from;  // --bootstrap-from URL (instead of bootstrap.peer)
};

// A start that cannot go on: the message says why (and what to do).
class StartError : public std::runtime_error {
 public:
  StartError(int exit_code, const std::string& message) : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const noexcept { return exit_code_; }

 private:
  int exit_code_;
};

// Opens, restores or bootstraps the segment as above. Throws StartError.
std::unique_ptr<Writer> open_segment(const Config& config, const StartOptions& start);

// Fetches a snapshot from a peer's GET /snapshot: sends `token` as a bearer
// token when not empty, refuses any answer but 200, and a body longer than
// `max_bytes`; gives up after `timeout_s` in all. Throws std::runtime_error
// naming the URL and what went wrong (unreachable, the status, too long,
// timed out). Main thread (and the bench tool).
std::vector<unsigned char> fetch_peer_snapshot(const HttpUrl& url, const std::string& token, double timeout_s,
                                               uint64_t max_bytes);

// Sets the image's SourceBlock::sync_state to CATCHING_UP (changed now), so
// the restored segment never shows the state it had where it was copied.
// Leaves an image whose source block is out of bounds alone (restore refuses
// it). Main thread.
void mark_catching_up(std::span<unsigned char> image);

}  // namespace larder::sidecar
