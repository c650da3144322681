// GET /snapshot on the metrics listener (snapshot.serve): a fresh snapshot
// of the segment for a peer's bootstrap (docs/operations.md, "New host").
//
// The HTTP worker asks the writer thread for an image (ImageExchange), then
// compresses it and streams the snapshot file's bytes as a chunked response
// (snapshot::write_snapshot with httplib's DataSink as the sink). One
// snapshot at a time: a second request while one is being served gets 503
// with Retry-After (a worker is busy for seconds with a large segment, and
// the listener has two).
//
// Auth: with a token (snapshot.token_file), a request must carry
// "Authorization: Bearer <token>"; anything else gets 401 and nothing else
// (no body, no image taken). The comparison takes the same time wherever the
// first difference is. Without a token (allowed on a loopback listener
// only, see config.cc) every request is served.
//
// Threads: install_snapshot_route() on the main thread before the listener
// starts; the handler on HTTP worker threads.
#pragma once

#include <string_view>

#include "config/config.h"
#include "snapshot/image_exchange.h"

namespace httplib {
class Server;
}

namespace larder::sidecar {

// True when `authorization` is exactly "Bearer " + token. Constant time in
// the token's content (the length of the header decides only the length of
// the loop). Any thread.
bool bearer_token_matches(std::string_view authorization, std::string_view token);

// Registers GET /snapshot on `server`. `config` and `images` must outlive it.
void install_snapshot_route(httplib::Server& server, const Config& config, ImageExchange& images);

}  // namespace larder::sidecar
