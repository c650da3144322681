// AMQP URL parsing (see amqp_url.h). Any thread.
#include "config/amqp_url.h"

#include <fmt/format.h>

namespace larder::sidecar {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool percent_decode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out->push_back(in[i]);
      continue;
    }
    if (i + 2 >= in.size()) return false;
    const int hi = hex_value(in[i + 1]);
    const int lo = hex_value(in[i + 2]);
    if (hi < 0 || lo < 0) return false;
    out->push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return true;
}

std::string percent_encode(std::string_view in) {
  std::string out;
  for (unsigned char c : in) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out += fmt::format("%{:02X}", c);
    }
  }
  return out;
}

}  // namespace

std::string AmqpUrl::to_string() const {
  const bool v6 = host.find(':') != std::string::npos;
  return fmt::format("{}://{}@{}{}{}:{}/{}", tls ? "amqps" : "amqp", percent_encode(user), v6 ? "[" : "", host,
                     v6 ? "]" : "", port, vhost == "/" ? std::string() : percent_encode(vhost));
}

bool parse_amqp_url(std::string_view text, AmqpUrl* out, std::string* error) {
  AmqpUrl url;
  std::string_view rest;
  if (text.starts_with("amqp://")) {
    rest = text.substr(7);
  } else if (text.starts_with("amqps://")) {
    url.tls = true;
    url.port = 5671;
    rest = text.substr(8);
  } else {
    *error = "must start with amqp:// or amqps://";
    return false;
  }
  if (rest.find_first_of("?#") != std::string_view::npos) {
    *error = "query strings and fragments are not supported; use the config keys (heartbeat_s, tls, ...)";
    return false;
  }
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  const std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);

  const size_t at = authority.rfind('@');
  if (at != std::string_view::npos) {
    const std::string_view userinfo = authority.substr(0, at);
    if (userinfo.find(':') != std::string_view::npos) {
      *error =
          "contains a password; remove it from the URL (it would show in process listings, logs "
          "and config backups) and set rabbitmq.password_env or rabbitmq.password_file";
      return false;
    }
    if (userinfo.empty() || !percent_decode(userinfo, &url.user)) {
      *error = "bad user name before '@'";
      return false;
    }
    authority = authority.substr(at + 1);
  }

  std::string_view host = authority;
  std::string_view port;
  if (authority.starts_with('[')) {
    const size_t close = authority.find(']');
    if (close == std::string_view::npos) {
      *error = "unterminated IPv6 address (missing ']')";
      return false;
    }
    host = authority.substr(1, close - 1);
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') {
        *error = "expected ':port' after the IPv6 address";
        return false;
      }
      port = after.substr(1);
    }
  } else {
    const size_t colon = authority.rfind(':');
    if (colon != std::string_view::npos) {
      host = authority.substr(0, colon);
      port = authority.substr(colon + 1);
    }
  }
  if (host.empty()) {
    *error = "missing host (e.g. amqp://user@127.0.0.1:5672/)";
    return false;
  }
  url.host.assign(host);
  if (authority.find(':') != std::string_view::npos || !port.empty()) {
    unsigned value = 0;
    if (port.empty() || port.size() > 5) {
      *error = "bad port (expected 1..65535)";
      return false;
    }
    for (char c : port) {
      if (c < '0' || c > '9') {
        *error = "bad port (expected 1..65535)";
        return false;
      }
      value = value * 10 + static_cast<unsigned>(c - '0');
    }
    if (value == 0 || value > 65535) {
      *error = "bad port (expected 1..65535)";
      return false;
    }
    url.port = static_cast<uint16_t>(value);
  }
  if (path.empty() || path == "/") {
    url.vhost = "/";
  } else if (!percent_decode(path, &url.vhost)) {
    *error = "bad percent-encoding in the vhost";
    return false;
  }
  *out = std::move(url);
  return true;
}

}  // namespace larder::sidecar
