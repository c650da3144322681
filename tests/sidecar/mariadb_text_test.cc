// The MariaDB driver's strict cell parsers, URL reader and literals
// (consume/sql/mariadb_text.h), without a server.
#include "consume/sql/mariadb_text.h"

#include <gtest/gtest.h>

#include <climits>

namespace larder::sidecar::sql::mariadb {
namespace {

TEST(MariadbText, IntegersAreParsedStrictly) {
  EXPECT_EQ(parse_int("0", false), 0);
  EXPECT_EQ(parse_int("-42", false), -42);
  EXPECT_EQ(parse_int("9223372036854775807", false), INT64_MAX);
  EXPECT_EQ(parse_int("-9223372036854775808", false), INT64_MIN);
  EXPECT_EQ(parse_int("9223372036854775807", true), INT64_MAX);
  EXPECT_FALSE(parse_int("9223372036854775808", true));  // BIGINT UNSIGNED beyond int64
  EXPECT_FALSE(parse_int("18446744073709551615", true));
  EXPECT_FALSE(parse_int("9223372036854775808", false));
  EXPECT_FALSE(parse_int("-1", true));
  for (const char* bad : {"", "-", "+1", " 1", "1 ", "1.0", "0x10", "1e3", "12a"}) {
    EXPECT_FALSE(parse_int(bad, false)) << bad;
  }
  // Bytes past the view are not read: "12" of "123".
  std::string_view view("123", 2);
  EXPECT_EQ(parse_int(view, false), 12);
}

TEST(MariadbText, FloatsAreFiniteAndWhole) {
  EXPECT_EQ(parse_float("1.5"), 1.5);
  EXPECT_EQ(parse_float("-2e-05"), -2e-05);
  EXPECT_EQ(parse_float("1e308"), 1e308);
  for (const char* bad : {"", "inf", "nan", "-inf", "1e999", "+1", "1.5x", " 1", "1,5"}) {
    EXPECT_FALSE(parse_float(bad)) << bad;
  }
}

TEST(MariadbText, DatetimesAreUtcMicroseconds) {
  EXPECT_EQ(parse_datetime("1970-01-01 00:00:00"), 0);
  EXPECT_EQ(parse_datetime("1970-01-01 00:00:01.5"), 1'500'000);
  EXPECT_EQ(parse_datetime("2024-02-29 12:34:56.000007"), int64_t{1709210096} * 1'000'000 + 7);
  EXPECT_EQ(parse_datetime("1969-12-31 23:59:59.999999"), -1);
  EXPECT_EQ(parse_datetime("9999-12-31 23:59:59.999999"), int64_t{253402300799} * 1'000'000 + 999'999);
  for (const char* bad :
       {"", "0000-00-00 00:00:00", "2024-00-10 00:00:00", "2024-13-01 00:00:00", "2023-02-29 00:00:00",
        "2024-02-30 00:00:00", "2024-01-01 24:00:00", "2024-01-01 00:60:00", "2024-01-01 00:00:60",
        "2024-01-01T00:00:00", "2024-01-01 00:00:00.", "2024-01-01 00:00:00.1234567", "2024-01-01 00:00:00Z",
        "2024-1-01 00:00:00", "2024-01-01", "20240101 000000000"}) {
    EXPECT_FALSE(parse_datetime(bad)) << bad;
  }
}

TEST(MariadbText, DatetimeLiteralsRoundTrip) {
  for (int64_t us : {int64_t{0}, int64_t{-1}, int64_t{1'500'000}, int64_t{1709210096} * 1'000'000 + 7,
                     int64_t{-86'400'000'001}, int64_t{253402300799} * 1'000'000 + 999'999}) {
    std::string text = format_datetime(us);
    EXPECT_EQ(parse_datetime(text), us) << text;
  }
  EXPECT_EQ(format_datetime(-1), "1969-12-31 23:59:59.999999");
}

TEST(MariadbText, IdentifiersAreBacktickQuoted) {
  EXPECT_EQ(quote_identifier("updated_at"), "`updated_at`");
  EXPECT_EQ(quote_identifier("we`ird"), "`we``ird`");
  EXPECT_EQ(quote_identifier("`"), "````");
  EXPECT_FALSE(quote_identifier(""));
  EXPECT_FALSE(quote_identifier(std::string_view("a\0b", 3)));
  EXPECT_FALSE(quote_identifier(std::string(65, 'a')));
  EXPECT_TRUE(quote_identifier(std::string(64, 'a')));
}

TEST(MariadbText, UrlsNameUserHostPortAndDatabase) {
  std::string error;
  auto u = parse_url("mysql://larder@127.0.0.1:3399/larder_test", &error);
  ASSERT_TRUE(u) << error;
  EXPECT_EQ(u->user, "larder");
  EXPECT_EQ(u->host, "127.0.0.1");
  EXPECT_EQ(u->port, 3399u);
  EXPECT_EQ(u->database, "larder_test");
  EXPECT_EQ(u->ssl_mode, Url::SslMode::kDisabled);

  u = parse_url("mariadb://app%40eu@db.example.com/features?ssl-mode=VERIFY_IDENTITY&ssl-ca=%2Fetc%2Fca.pem", &error);
  ASSERT_TRUE(u) << error;
  EXPECT_EQ(u->user, "app@eu");
  EXPECT_EQ(u->port, 3306u);
  EXPECT_EQ(u->ssl_mode, Url::SslMode::kVerifyIdentity);
  EXPECT_EQ(u->ssl_ca, "/etc/ca.pem");

  u = parse_url("mysql://u@[::1]:3307/d?ssl-mode=required", &error);
  ASSERT_TRUE(u) << error;
  EXPECT_EQ(u->host, "::1");
  EXPECT_EQ(u->port, 3307u);
  EXPECT_EQ(u->ssl_mode, Url::SslMode::kRequired);
}

TEST(MariadbText, BadUrlsSayWhatIsWrong) {
  struct Case {
    const char* url;
    const char* says;
  } cases[] = {
      {"postgresql://u@h/d", "scheme"},
      {"mysql://h:3306/d", "no user"},
      {"mysql://u:secret@h/d", "password in the URL"},
      {"mysql://u@h:0/d", "port '0'"},
      {"mysql://u@h:65536/d", "port '65536'"},
      {"mysql://u@h:33a/d", "port '33a'"},
      {"mysql://u@h:/d", "port ''"},
      {"mysql://u@h", "no database"},
      {"mysql://u@h/", "no database"},
      {"mysql://u@/d", "no host"},
      {"mysql://u@h%20x/d", "host"},
      {"mysql://u%zz@h/d", "escape"},
      {"mysql://u@h/d?ssl-mode=maybe", "ssl-mode 'maybe'"},
      {"mysql://u@h/d?sslmode=require", "unknown option 'sslmode'"},
      {"mysql://u@h/d?ssl-ca", "no value"},
  };
  for (const Case& c : cases) {
    std::string error;
    EXPECT_FALSE(parse_url(c.url, &error)) << c.url;
    EXPECT_NE(error.find(c.says), std::string::npos) << c.url << ": " << error;
    EXPECT_EQ(error.find("secret"), std::string::npos) << error;
  }
}

}  // namespace
}  // namespace larder::sidecar::sql::mariadb
