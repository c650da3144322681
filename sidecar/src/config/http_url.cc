// HTTP URL parsing (see http_url.h). Any thread.
#include "config/http_url.h"

#include <fmt/format.h>

namespace larder::sidecar {

std::string HttpUrl::origin() const {
  const bool v6 = host.find(':') != std::string::npos;
  return fmt::format("{}://{}{}{}:{}", tls ? "https" : "http", v6 ? "[" : "", host, v6 ? "]" : "", port);
}

std::string HttpUrl::to_string() const { return origin() + path; }

bool parse_http_url(std::string_view text, HttpUrl* out, std::string* error) {
  HttpUrl url;
  std::string_view rest;
  if (text.starts_with("http://")) {
    rest = text.substr(7);
  } else if (text.starts_with("https://")) {
    url.tls = true;
    url.port = 443;
    rest = text.substr(8);
  } else {
    *error = fmt::format("\"{}\" is not an http:// or https:// URL (e.g. http://10.0.0.7:9464/snapshot)", text);
    return false;
  }
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  if (slash != std::string_view::npos) url.path = std::string(rest.substr(slash));
  if (authority.find('@') != std::string_view::npos) {
    *error = "the URL carries user info; the peer's token comes from bootstrap.peer_token_file";
    return false;
  }
  std::string_view port;
  if (authority.starts_with("[")) {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      *error = "an IPv6 host needs its closing bracket, e.g. http://[::1]:9464/snapshot";
      return false;
    }
    url.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        *error = fmt::format("unexpected \"{}\" after the IPv6 host", after);
        return false;
      }
      port = after.substr(1);
      if (port.empty()) {
        *error = "empty port";
        return false;
      }
    }
  } else {
    const size_t colon = authority.find(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) {
        *error = "empty port";
        return false;
      }
    }
  }
  if (url.host.empty()) {
    *error = "the URL names no host";
    return false;
  }
  for (char c : url.host) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
                    c == '.' || c == ':' || c == '_';
    if (!ok) {
      *error = fmt::format("the host \"{}\" holds a character a host name cannot", url.host);
      return false;
    }
  }
  if (!port.empty()) {
    bool digits = port.size() <= 5;
    uint32_t v = 0;
    for (char c : port) {
      digits = digits && c >= '0' && c <= '9';
      if (digits) v = v * 10 + static_cast<uint32_t>(c - '0');
    }
    if (!digits || v == 0 || v > 65535) {
      *error = fmt::format("port \"{}\" is not in 1..65535", port);
      return false;
    }
    url.port = static_cast<uint16_t>(v);
  }
  for (unsigned char c : url.path) {
    if (c <= ' ' || c == 0x7f || c == '?' || c == '#') {
      *error = fmt::format("the path \"{}\" holds a space, control character, query or fragment", url.path);
      return false;
    }
  }
  *out = std::move(url);
  return true;
}

}  // namespace larder::sidecar
