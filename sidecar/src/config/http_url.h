// HTTP URLs of a peer's GET /snapshot (bootstrap.peer, --bootstrap-from):
// http://host:port/path and https://. Pure functions: any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace larder::sidecar {

struct HttpUrl {
  bool tls = false;    // https://
  std::string host;    // IPv6 without brackets
  uint16_t port = 80;  // 443 for https:// unless given
  std::string path = "/snapshot";

  // "http://host:port" (IPv6 in brackets): what httplib::Client takes.
  std::string origin() const;
  // origin() + path; safe to log (a URL never carries credentials).
  std::string to_string() const;
};

// Parses `text`. On failure returns false and sets *error to a sentence that
// says what is wrong. Rules: scheme http or https; no user info ("user@" is
// refused: the token comes from a file); host required (IPv6 in brackets);
// port optional, 1..65535; path optional (default "/snapshot"), no query or
// fragment, no spaces or control characters.
bool parse_http_url(std::string_view text, HttpUrl* out, std::string* error);

}  // namespace larder::sidecar
