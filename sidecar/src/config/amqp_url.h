// AMQP URLs for the sidecar config: amqp://user@host:port/vhost and amqps://.
// The password is never part of the URL (it comes from password_env or
// password_file), so a URL that carries one is refused. Pure functions: any
// thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace larder::sidecar {

struct AmqpUrl {
  bool tls = false;  // amqps://
  std::string user = "guest";
  std::string host;
  uint16_t port = 5672;  // 5671 for amqps:// unless given
  std::string vhost = "/";

  // amqps://user@host:port/vhost with the vhost percent-encoded; safe to log.
  std::string to_string() const;
};

// Parses `text`. On failure returns false and sets *error to a sentence that
// says what is wrong and how to fix it. Rules:
//  * scheme amqp or amqps; user optional (default "guest"), percent-decoded;
//  * a password ("user:secret@") is an error: use password_env or password_file;
//  * host required (IPv6 in brackets: amqp://[::1]:5672/);
//  * port optional, 1..65535;
//  * vhost: "", "/" or absent mean "/"; otherwise the percent-decoded path
//    ("/%2Fprod" is "/prod", "/prod" is "prod"). No query string.
bool parse_amqp_url(std::string_view text, AmqpUrl* out, std::string* error);

}  // namespace larder::sidecar
