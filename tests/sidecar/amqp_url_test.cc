// Unit tests of AMQP URL parsing. No broker.
#include "config/amqp_url.h"

#include <gtest/gtest.h>

namespace larder::sidecar {
namespace {

AmqpUrl ok(const std::string& text) {
  AmqpUrl u;
  std::string error;
  EXPECT_TRUE(parse_amqp_url(text, &u, &error)) << text << ": " << error;
  return u;
}

std::string bad(const std::string& text) {
  AmqpUrl u;
  std::string error;
  EXPECT_FALSE(parse_amqp_url(text, &u, &error)) << text;
  return error;
}

TEST(AmqpUrlTest, Parses) {
  AmqpUrl u = ok("amqp://guest@127.0.0.1:5699/");
  EXPECT_EQ(u.user, "guest");
  EXPECT_EQ(u.host, "127.0.0.1");
  EXPECT_EQ(u.port, 5699);
  EXPECT_EQ(u.vhost, "/");
  EXPECT_FALSE(u.tls);
  u = ok("amqps://svc%40team@broker/%2Fprod");
  EXPECT_TRUE(u.tls);
  EXPECT_EQ(u.user, "svc@team");
  EXPECT_EQ(u.port, 5671);
  EXPECT_EQ(u.vhost, "/prod");
  u = ok("amqp://[::1]:5673/v");
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 5673);
  EXPECT_EQ(u.vhost, "v");
  u = ok("amqp://host");
  EXPECT_EQ(u.user, "guest");
  EXPECT_EQ(u.port, 5672);
  EXPECT_EQ(u.vhost, "/");
  EXPECT_EQ(ok("amqps://a@h:1/%2Fx").to_string(), "amqps://a@h:1/%2Fx");
}

TEST(AmqpUrlTest, RefusesPasswordsAndBadInput) {
  EXPECT_NE(bad("amqp://user:secret@host/").find("password_env"), std::string::npos);
  EXPECT_NE(bad("amqp://user:@host/").find("password"), std::string::npos);
  bad("http://host/");
  bad("amqp://");
  bad("amqp://@host/");
  bad("amqp://host:0/");
  bad("amqp://host:65536/");
  bad("amqp://host:abc/");
  bad("amqp://host:/");
  bad("amqp://[::1/");
  bad("amqp://host/%zz");
  bad("amqp://host/?heartbeat=5");
}

}  // namespace
}  // namespace larder::sidecar
