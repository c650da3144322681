// larder-example-producer: publishes a realistic, seeded stream of feature
// updates (users, items, clicks, embeddings) to RabbitMQ in Larder's message
// format v1 (docs/message-format.md), with publisher confirms.
//
//   larder-example-producer --url amqp://guest@127.0.0.1:5699
//       --exchange features --count 20000 --batch 50 --rate 200 --seed 7
//
// The password comes from the environment variable named by --password-env
// (default LARDER_AMQP_PASSWORD), never from the command line; a password in
// the URL is used only when that variable is unset.
//
// Tables and fields it writes (examples/demo.yaml declares them):
//   users  clicks_1h int64, spend_usd float64, is_premium bool,
//          country string(8), embedding float32[--embedding-dims];
//          and raw events the sidecar aggregates: "click": 1 with every
//          click, "amount": the price with every purchase
//   items  price float64, ctr float32, category string(16)
// Each update carries a unique "id" and an "event_time" that is the wall
// clock in ms, made strictly increasing per key so that last-write-wins
// never has to break a tie between two updates of one row.
//
// Delivery: the channel is put in confirm mode and every message is
// published persistent and mandatory. At most --window messages are
// unconfirmed at a time; basic.ack / basic.nack frames (possibly "multiple")
// settle them, basic.return reports a message no queue was bound to take.
// The exit status is 0 only if every message was acked and none returned.
//
// Routing: --routing-key may contain "{table}" (the default is
// "{table}.update"); each message then holds updates of one table, so a
// sidecar can bind "users.#" only. Without it, batches mix tables.
//
// Threads: one. rabbitmq-c connections are not thread-safe; this program
// owns its connection on the main thread.

#include <amqp.h>
#include <amqp_framing.h>
#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <sys/time.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::string url = "amqp://guest@127.0.0.1:5699";
  std::string password_env = "LARDER_AMQP_PASSWORD";
  std::string exchange = "features";
  std::string exchange_type = "topic";
  bool declare_exchange = true;
  std::string routing_key = "{table}.update";  // "{table}": one table per message
  std::string cacert;                          // amqps: CA file (default: system store)
  std::string cert;                            // amqps: client certificate (optional)
  std::string key;                             // amqps: client key (optional)
  std::uint64_t count = 10000;                 // updates to publish
  std::uint32_t batch = 1;                     // updates per message (1: a JSON object)
  double rate = 0;                             // messages per second, 0: as fast as confirms allow
  std::uint32_t window = 1000;                 // max unconfirmed messages
  std::uint64_t seed = 0;                      // 0: pick one and print it
  std::uint32_t users = 1000;
  std::uint32_t items = 200;
  std::uint32_t embedding_dims = 16;
  std::uint32_t print = 2;  // message bodies to print in full
};

[[noreturn]] void fail(const std::string& what) { throw std::runtime_error(what); }

std::int64_t wall_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// ---------------------------------------------------------------------------
// JSON writing: just what the message format needs.

void append_json_string(std::string& out, std::string_view s) {
  out += '"';
  for (char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
}

// Shortest round-trip form. Floating-point values always carry a '.' or an
// exponent ("0.0", not "0"), so no reader mistakes them for integers.
template <typename T>
void append_number(std::string& out, T v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  if (ec != std::errc{}) fail("number formatting failed");
  out.append(buf, end);
  if constexpr (std::is_floating_point_v<T>) {
    if (std::string_view(buf, end - buf).find_first_of(".e") == std::string_view::npos) out += ".0";
  }
}

// One update in message format v1. `fields` is the JSON text of the fields
// object (without braces), empty for a delete.
struct Update {
  const char* table;
  std::string key;
  std::int64_t event_time;
  bool is_delete;
  std::string fields;
  std::string id;
};

void append_update(std::string& out, const Update& u) {
  out += "{\"table\":";
  append_json_string(out, u.table);
  out += ",\"key\":";
  append_json_string(out, u.key);
  out += ",\"event_time\":";
  append_number(out, u.event_time);
  out += u.is_delete ? ",\"op\":\"delete\"" : ",\"op\":\"upsert\"";
  if (!u.is_delete) {
    out += ",\"fields\":{";
    out += u.fields;
    out += '}';
  }
  out += ",\"id\":";
  append_json_string(out, u.id);
  out += '}';
}

// Appends `"name":` preceded by a comma when the object already has members.
void field_name(std::string& f, const char* name) {
  if (!f.empty()) f += ',';
  append_json_string(f, name);
  f += ':';
}

// ---------------------------------------------------------------------------
// The simulated world: users browse and buy items; a feature pipeline emits
// the resulting feature updates. Popular users and items are picked more
// often (a power law), as in real traffic.

class FeatureStream {
 public:
  FeatureStream(const Options& o, std::uint64_t seed)
      : opt_(o), rng_(seed), seed_(seed), users_(o.users), items_(o.items) {}

  // The next update of the stream.
  Update next() {
    while (pending_.empty()) simulate_event();
    Update u = std::move(pending_.front());
    pending_.pop_front();
    if (u.is_delete) ++n_deletes_;
    (std::strcmp(u.table, "users") == 0 ? n_users_ : n_items_)++;
    return u;
  }

  std::uint64_t count_users() const { return n_users_; }
  std::uint64_t count_items() const { return n_items_; }
  std::uint64_t count_deletes() const { return n_deletes_; }

 private:
  struct User {
    bool seen = false;
    std::deque<std::int64_t> clicks;  // click times within the last hour
    double spend_usd = 0;
    bool is_premium = false;
    const char* country = "US";
  };
  struct Item {
    bool live = false;
    double price = 0;
    std::uint64_t clicks = 0;
    std::uint64_t impressions = 0;
    const char* category = "";
  };

  static constexpr const char* kCountries[] = {"US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "ES", "NL"};
  static constexpr const char* kCategories[] = {"books",   "electronics", "home_garden", "toys",       "grocery",
                                                "fashion", "sports",      "beauty",      "automotive", "music"};
  static constexpr std::int64_t kHourMs = 3'600'000;

  double uniform() { return std::uniform_real_distribution<double>(0, 1)(rng_); }
  // Index in [0, n) with low indices far more likely (popular entities).
  std::uint32_t skewed(std::uint32_t n) {
    double u = uniform();
    return std::min<std::uint32_t>(n - 1, static_cast<std::uint32_t>(n * u * u * u));
  }
  template <typename T, std::size_t N>
  const T& pick(const T (&a)[N]) {
    return a[std::uniform_int_distribution<std::size_t>(0, N - 1)(rng_)];
  }

  static std::string user_key(std::uint32_t i) {
    char b[16];
    std::snprintf(b, sizeof b, "u%06u", i);
    return b;
  }
  static std::string item_key(std::uint32_t i) {
    char b[16];
    std::snprintf(b, sizeof b, "i%05u", i);
    return b;
  }

  // Wall-clock event time, strictly increasing per key.
  std::int64_t event_time(const std::string& key) {
    std::int64_t& last = last_time_[key];
    last = std::max(wall_ms(), last + 1);
    return last;
  }

  void emit(const char* table, const std::string& key, std::string fields, bool is_delete = false) {
    char id[48];
    std::snprintf(id, sizeof id, "p%llx-%llu", static_cast<unsigned long long>(seed_),
                  static_cast<unsigned long long>(++seq_));
    pending_.push_back(Update{table, key, event_time(key), is_delete, std::move(fields), id});
  }

  std::int64_t clicks_1h(User& u, std::int64_t now) {
    while (!u.clicks.empty() && u.clicks.front() <= now - kHourMs) u.clicks.pop_front();
    return static_cast<std::int64_t>(u.clicks.size());
  }

  void append_embedding(std::string& f) {
    field_name(f, "embedding");
    std::vector<float> v(opt_.embedding_dims);
    double norm = 0;
    std::normal_distribution<float> g(0, 1);
    for (float& x : v) {
      x = g(rng_);
      norm += double(x) * x;
    }
    const float inv = norm > 0 ? static_cast<float>(1 / std::sqrt(norm)) : 0.f;
    f += '[';
    for (std::size_t i = 0; i < v.size(); ++i) {
      if (i) f += ',';
      append_number(f, v[i] * inv);
    }
    f += ']';
  }

  // A new user: the full profile.
  void user_created(std::uint32_t i) {
    User& u = users_[i];
    u.seen = true;
    u.is_premium = uniform() < 0.15;
    u.country = pick(kCountries);
    std::string f;
    field_name(f, "clicks_1h");
    append_number(f, std::int64_t{0});
    field_name(f, "spend_usd");
    append_number(f, 0.0);
    field_name(f, "is_premium");
    f += u.is_premium ? "true" : "false";
    field_name(f, "country");
    append_json_string(f, u.country);
    append_embedding(f);
    emit("users", user_key(i), std::move(f));
  }

  // A new (or relisted) item: the full record.
  void item_listed(std::uint32_t i) {
    Item& it = items_[i];
    it.live = true;
    if (it.price == 0) {
      it.price = std::round(std::exp(1.5 + 3.0 * uniform()) * 100) / 100;  // ~4.5 .. 90
      it.category = pick(kCategories);
    }
    std::string f;
    field_name(f, "price");
    append_number(f, it.price);
    field_name(f, "ctr");
    append_number(f, ctr(it));
    field_name(f, "category");
    append_json_string(f, it.category);
    emit("items", item_key(i), std::move(f));
  }

  static float ctr(const Item& it) {
    return it.impressions ? static_cast<float>(double(it.clicks) / double(it.impressions)) : 0.f;
  }

  void simulate_event() {
    const std::uint32_t ui = skewed(opt_.users), ii = skewed(opt_.items);
    User& u = users_[ui];
    Item& it = items_[ii];
    if (!u.seen) return user_created(ui);
    if (!it.live) return item_listed(ii);

    const double r = uniform();
    const std::int64_t now = wall_ms();
    std::string f;
    if (r < 0.35) {  // click: the user's activity and the item's CTR change
      u.clicks.push_back(now);
      ++it.clicks;
      it.impressions = std::max(it.impressions, it.clicks);
      field_name(f, "clicks_1h");
      append_number(f, clicks_1h(u, now));
      field_name(f, "click");  // the raw event: the sidecar's rolling counts fold it
      append_number(f, 1);
      emit("users", user_key(ui), std::move(f));
      std::string g;
      field_name(g, "ctr");
      append_number(g, ctr(it));
      emit("items", item_key(ii), std::move(g));
    } else if (r < 0.60) {  // impressions served: the CTR drifts down
      it.impressions += 20 + static_cast<std::uint64_t>(180 * uniform());
      field_name(f, "ctr");
      append_number(f, ctr(it));
      emit("items", item_key(ii), std::move(f));
    } else if (r < 0.70) {  // purchase
      u.spend_usd = std::round((u.spend_usd + it.price) * 100) / 100;
      field_name(f, "spend_usd");
      append_number(f, u.spend_usd);
      field_name(f, "amount");  // the raw event: the sidecar's rolling spend folds it
      append_number(f, it.price);
      if (!u.is_premium && u.spend_usd > 500) {  // big spenders get premium
        u.is_premium = true;
        field_name(f, "is_premium");
        f += "true";
      }
      emit("users", user_key(ui), std::move(f));
    } else if (r < 0.78) {  // nightly model refresh of the user's embedding
      append_embedding(f);
      emit("users", user_key(ui), std::move(f));
    } else if (r < 0.83) {  // profile change (moved, or premium lapsed)
      if (uniform() < 0.5)
        u.country = pick(kCountries);
      else
        u.is_premium = !u.is_premium;
      field_name(f, "is_premium");
      f += u.is_premium ? "true" : "false";
      field_name(f, "country");
      append_json_string(f, u.country);
      emit("users", user_key(ui), std::move(f));
    } else if (r < 0.98) {  // repricing, +-10%
      it.price = std::max(0.99, std::round(it.price * (0.9 + 0.2 * uniform()) * 100) / 100);
      field_name(f, "price");
      append_number(f, it.price);
      emit("items", item_key(ii), std::move(f));
    } else {  // item discontinued: delete it; it may be relisted later
      it.live = false;
      emit("items", item_key(ii), {}, /*is_delete=*/true);
    }
  }

  const Options& opt_;
  std::mt19937_64 rng_;
  std::uint64_t seed_;
  std::uint64_t seq_ = 0;
  std::vector<User> users_;
  std::vector<Item> items_;
  std::unordered_map<std::string, std::int64_t> last_time_;
  std::deque<Update> pending_;
  std::uint64_t n_users_ = 0, n_items_ = 0, n_deletes_ = 0;
};

// ---------------------------------------------------------------------------
// AMQP: one connection, one channel in confirm mode.

std::string describe(amqp_rpc_reply_t r) {
  switch (r.reply_type) {
    case AMQP_RESPONSE_NORMAL: return "ok";
    case AMQP_RESPONSE_NONE: return "missing RPC reply";
    case AMQP_RESPONSE_LIBRARY_EXCEPTION: return amqp_error_string2(r.library_error);
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        auto* m = static_cast<amqp_connection_close_t*>(r.reply.decoded);
        return "connection closed by the server: " + std::to_string(m->reply_code) + " " +
               std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len);
      }
      if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        auto* m = static_cast<amqp_channel_close_t*>(r.reply.decoded);
        return "channel closed by the server: " + std::to_string(m->reply_code) + " " +
               std::string(static_cast<char*>(m->reply_text.bytes), m->reply_text.len);
      }
      return "server exception, method id " + std::to_string(r.reply.id);
  }
  return "unknown reply";
}

void check(amqp_rpc_reply_t r, const std::string& what) {
  if (r.reply_type != AMQP_RESPONSE_NORMAL) fail(what + ": " + describe(r));
}

class Publisher {
 public:
  explicit Publisher(const Options& o) : opt_(o), conn_(amqp_new_connection()) {
    if (!conn_) fail("out of memory");
    connect();
  }
  ~Publisher() {
    if (open_) {
      amqp_channel_close(conn_, kChannel, AMQP_REPLY_SUCCESS);
      amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
    }
    amqp_destroy_connection(conn_);
  }
  Publisher(const Publisher&) = delete;
  Publisher& operator=(const Publisher&) = delete;

  // Publishes one message; blocks while --window messages are unconfirmed.
  void publish(const std::string& routing_key, const std::string& body, const std::string& message_id) {
    while (unconfirmed_.size() >= opt_.window) pump(std::chrono::milliseconds(1000));
    amqp_basic_properties_t p{};
    p._flags = AMQP_BASIC_CONTENT_TYPE_FLAG | AMQP_BASIC_DELIVERY_MODE_FLAG | AMQP_BASIC_MESSAGE_ID_FLAG |
               AMQP_BASIC_APP_ID_FLAG | AMQP_BASIC_TIMESTAMP_FLAG;
    p.content_type = amqp_cstring_bytes("application/json");
    p.delivery_mode = AMQP_DELIVERY_PERSISTENT;
    p.message_id = amqp_cstring_bytes(message_id.c_str());
    p.app_id = amqp_cstring_bytes("larder-example-producer");
    p.timestamp = static_cast<std::uint64_t>(wall_ms() / 1000);
    amqp_bytes_t b{body.size(), const_cast<char*>(body.data())};
    int rc = amqp_basic_publish(conn_, kChannel, amqp_cstring_bytes(opt_.exchange.c_str()),
                                amqp_cstring_bytes(routing_key.c_str()),
                                /*mandatory=*/1, /*immediate=*/0, &p, b);
    if (rc != AMQP_STATUS_OK) fail(std::string("publish failed: ") + amqp_error_string2(rc));
    unconfirmed_.insert(++next_tag_);
  }

  // Reads confirms (and anything else the broker sends) for up to `wait`.
  void pump(Clock::duration wait) {
    const auto deadline = Clock::now() + wait;
    do {
      auto left = std::max<Clock::duration>(deadline - Clock::now(), Clock::duration::zero());
      auto us = std::chrono::duration_cast<std::chrono::microseconds>(left).count();
      timeval tv{static_cast<time_t>(us / 1'000'000), static_cast<suseconds_t>(us % 1'000'000)};
      amqp_frame_t frame;
      int rc = amqp_simple_wait_frame_noblock(conn_, &frame, &tv);
      if (rc == AMQP_STATUS_TIMEOUT) return;
      if (rc != AMQP_STATUS_OK) fail(std::string("connection lost: ") + amqp_error_string2(rc));
      handle(frame);
      amqp_maybe_release_buffers(conn_);
    } while (!unconfirmed_.empty() && Clock::now() < deadline);
  }

  // Waits until every published message is confirmed, or `limit` passes.
  bool drain(Clock::duration limit) {
    const auto deadline = Clock::now() + limit;
    while (!unconfirmed_.empty() && Clock::now() < deadline) pump(std::chrono::milliseconds(200));
    return unconfirmed_.empty();
  }

  std::uint64_t published() const { return next_tag_; }
  std::uint64_t acked() const { return acked_; }
  std::uint64_t nacked() const { return nacked_; }
  std::uint64_t returned() const { return returned_; }
  std::size_t unconfirmed() const { return unconfirmed_.size(); }

 private:
  static constexpr amqp_channel_t kChannel = 1;

  void connect() {
    std::vector<char> url(opt_.url.begin(), opt_.url.end());
    url.push_back('\0');
    amqp_connection_info ci;
    amqp_default_connection_info(&ci);
    if (amqp_parse_url(url.data(), &ci) != AMQP_STATUS_OK) fail("cannot parse --url " + opt_.url);
    // "amqp://host:port/" names the vhost "" to rabbitmq-c; like most
    // clients, read an empty vhost as the default "/".
    std::string vhost = (ci.vhost && *ci.vhost) ? ci.vhost : "/";
    std::string password = ci.password ? ci.password : "guest";
    if (const char* env = std::getenv(opt_.password_env.c_str())) password = env;

    amqp_socket_t* sock = nullptr;
    if (ci.ssl) {
      sock = amqp_ssl_socket_new(conn_);
      if (!sock) fail("cannot create a TLS socket");
      amqp_ssl_socket_set_verify_peer(sock, 1);
      amqp_ssl_socket_set_verify_hostname(sock, 1);
      if (!opt_.cacert.empty() && amqp_ssl_socket_set_cacert(sock, opt_.cacert.c_str()) != AMQP_STATUS_OK)
        fail("cannot read CA file " + opt_.cacert);
      if (!opt_.cert.empty() && amqp_ssl_socket_set_key(sock, opt_.cert.c_str(), opt_.key.c_str()) != AMQP_STATUS_OK)
        fail("cannot read client certificate " + opt_.cert + " / key " + opt_.key);
    } else {
      sock = amqp_tcp_socket_new(conn_);
      if (!sock) fail("cannot create a TCP socket");
    }
    timeval tv{10, 0};
    int rc = amqp_socket_open_noblock(sock, ci.host, ci.port, &tv);
    if (rc != AMQP_STATUS_OK)
      fail(std::string("cannot connect to ") + ci.host + ":" + std::to_string(ci.port) + ": " + amqp_error_string2(rc));

    // Ask for connection.blocked notifications, so a broker alarm (memory,
    // disk) is reported instead of looking like a hang.
    amqp_table_entry_t caps[2];
    caps[0].key = amqp_cstring_bytes("connection.blocked");
    caps[0].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    caps[0].value.value.boolean = 1;
    caps[1].key = amqp_cstring_bytes("publisher_confirms");
    caps[1].value.kind = AMQP_FIELD_KIND_BOOLEAN;
    caps[1].value.value.boolean = 1;
    amqp_table_entry_t props[2];
    props[0].key = amqp_cstring_bytes("capabilities");
    props[0].value.kind = AMQP_FIELD_KIND_TABLE;
    props[0].value.value.table = amqp_table_t{2, caps};
    props[1].key = amqp_cstring_bytes("connection_name");
    props[1].value.kind = AMQP_FIELD_KIND_UTF8;
    props[1].value.value.bytes = amqp_cstring_bytes("larder-example-producer");
    amqp_table_t client_props{2, props};
    check(
        amqp_login_with_properties(conn_, vhost.c_str(), 0, AMQP_DEFAULT_FRAME_SIZE,
                                   /*heartbeat=*/30, &client_props, AMQP_SASL_METHOD_PLAIN, ci.user, password.c_str()),
        std::string("login as ") + ci.user + " on vhost " + vhost);
    open_ = true;
    amqp_channel_open(conn_, kChannel);
    check(amqp_get_rpc_reply(conn_), "channel.open");
    if (opt_.declare_exchange) {
      amqp_exchange_declare(conn_, kChannel, amqp_cstring_bytes(opt_.exchange.c_str()),
                            amqp_cstring_bytes(opt_.exchange_type.c_str()), /*passive=*/0,
                            /*durable=*/1, /*auto_delete=*/0, /*internal=*/0, amqp_empty_table);
      check(amqp_get_rpc_reply(conn_), "exchange.declare " + opt_.exchange);
    }
    amqp_confirm_select(conn_, kChannel);
    check(amqp_get_rpc_reply(conn_), "confirm.select");
  }

  // Settles tag (and, if multiple, every earlier unconfirmed tag).
  std::uint64_t settle(std::uint64_t tag, bool multiple) {
    if (!multiple) return unconfirmed_.erase(tag);
    auto end = unconfirmed_.upper_bound(tag);
    auto n = static_cast<std::uint64_t>(std::distance(unconfirmed_.begin(), end));
    unconfirmed_.erase(unconfirmed_.begin(), end);
    return n;
  }

  void handle(const amqp_frame_t& frame) {
    if (frame.frame_type != AMQP_FRAME_METHOD) return;  // heartbeats are handled by the library
    const amqp_method_t& m = frame.payload.method;
    switch (m.id) {
      case AMQP_BASIC_ACK_METHOD: {
        auto* a = static_cast<amqp_basic_ack_t*>(m.decoded);
        acked_ += settle(a->delivery_tag, a->multiple);
        break;
      }
      case AMQP_BASIC_NACK_METHOD: {
        auto* n = static_cast<amqp_basic_nack_t*>(m.decoded);
        std::uint64_t k = settle(n->delivery_tag, n->multiple);
        nacked_ += k;
        std::fprintf(stderr, "producer: broker nacked %llu message(s) up to tag %llu\n",
                     static_cast<unsigned long long>(k), static_cast<unsigned long long>(n->delivery_tag));
        break;
      }
      case AMQP_BASIC_RETURN_METHOD: {
        // The content follows the method; read it off the wire.
        auto* r = static_cast<amqp_basic_return_t*>(m.decoded);
        if (returned_++ == 0)
          std::fprintf(stderr,
                       "producer: message returned: %d %.*s (exchange %.*s, routing key %.*s): "
                       "is a queue bound? (the sidecar binds it at start)\n",
                       r->reply_code, static_cast<int>(r->reply_text.len), static_cast<char*>(r->reply_text.bytes),
                       static_cast<int>(r->exchange.len), static_cast<char*>(r->exchange.bytes),
                       static_cast<int>(r->routing_key.len), static_cast<char*>(r->routing_key.bytes));
        amqp_message_t msg;
        check(amqp_read_message(conn_, frame.channel, &msg, 0), "reading a returned message");
        amqp_destroy_message(&msg);
        break;
      }
      case AMQP_CONNECTION_BLOCKED_METHOD: {
        auto* b = static_cast<amqp_connection_blocked_t*>(m.decoded);
        std::fprintf(stderr, "producer: broker blocked publishing: %.*s\n", static_cast<int>(b->reason.len),
                     static_cast<char*>(b->reason.bytes));
        break;
      }
      case AMQP_CONNECTION_UNBLOCKED_METHOD: std::fprintf(stderr, "producer: broker unblocked publishing\n"); break;
      case AMQP_CHANNEL_CLOSE_METHOD: {
        auto* c = static_cast<amqp_channel_close_t*>(m.decoded);
        std::string text(static_cast<char*>(c->reply_text.bytes), c->reply_text.len);
        amqp_channel_close_ok_t ok{};
        amqp_send_method(conn_, frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
        fail("channel closed by the broker: " + std::to_string(c->reply_code) + " " + text);
      }
      case AMQP_CONNECTION_CLOSE_METHOD: {
        auto* c = static_cast<amqp_connection_close_t*>(m.decoded);
        std::string text(static_cast<char*>(c->reply_text.bytes), c->reply_text.len);
        amqp_connection_close_ok_t ok{};
        amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
        open_ = false;
        fail("connection closed by the broker: " + std::to_string(c->reply_code) + " " + text);
      }
      default: std::fprintf(stderr, "producer: ignoring unexpected method 0x%08x\n", m.id);
    }
  }

  const Options& opt_;
  amqp_connection_state_t conn_;
  bool open_ = false;
  std::uint64_t next_tag_ = 0;           // delivery tags count from 1 per channel
  std::set<std::uint64_t> unconfirmed_;  // published, neither acked nor nacked
  std::uint64_t acked_ = 0, nacked_ = 0, returned_ = 0;
};

std::string redact(std::string url) {
  // amqp://user:secret@host -> amqp://user:***@host
  auto scheme = url.find("://");
  auto at = url.find('@');
  if (scheme == std::string::npos || at == std::string::npos) return url;
  auto colon = url.find(':', scheme + 3);
  if (colon != std::string::npos && colon < at) url.replace(colon + 1, at - colon - 1, "***");
  return url;
}

// The routing key of an update: --routing-key with "{table}" replaced.
std::string routing_key_for(const std::string& pattern, std::string_view table) {
  std::string rk = pattern;
  for (auto pos = rk.find("{table}"); pos != std::string::npos; pos = rk.find("{table}", pos))
    rk.replace(pos, 7, table);
  return rk;
}

int run(const Options& opt) {
  const std::uint64_t seed = opt.seed ? opt.seed : std::random_device{}();
  std::printf("producer: %s exchange=%s routing_key=%s count=%llu batch=%u rate=%g/s seed=%llu\n",
              redact(opt.url).c_str(), opt.exchange.c_str(), opt.routing_key.c_str(),
              static_cast<unsigned long long>(opt.count), opt.batch, opt.rate, static_cast<unsigned long long>(seed));
  std::fflush(stdout);

  FeatureStream stream(opt, seed);
  Publisher pub(opt);

  const auto start = Clock::now();
  auto last_report = start;
  const auto interval = opt.rate > 0
                            ? std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(1.0 / opt.rate))
                            : Clock::duration::zero();
  auto next_send = start;
  std::uint64_t generated = 0, sent_updates = 0, messages = 0;

  // A message being filled, per routing key: with "{table}" in the routing
  // key every message holds one table's updates, otherwise they mix.
  struct Batch {
    std::string body;
    std::uint32_t n = 0;
    std::string first_id;
  };
  std::unordered_map<std::string, Batch> open;

  auto send = [&](const std::string& rk, Batch& b) {
    if (opt.batch > 1) b.body += ']';
    // Rate limiting waits by reading confirms, which also services heartbeats.
    while (Clock::now() < next_send) pub.pump(next_send - Clock::now());
    pub.publish(rk, b.body, b.first_id);
    next_send += interval;
    sent_updates += b.n;
    ++messages;
    if (messages <= opt.print)
      std::printf("producer: message %llu (%s): %s\n", static_cast<unsigned long long>(messages), rk.c_str(),
                  b.body.c_str());
    b = Batch{};
    if (Clock::now() - last_report >= std::chrono::seconds(1)) {
      last_report = Clock::now();
      std::printf("producer: published %llu messages (%llu updates), %llu confirmed\n",
                  static_cast<unsigned long long>(messages), static_cast<unsigned long long>(sent_updates),
                  static_cast<unsigned long long>(pub.acked() + pub.nacked()));
      std::fflush(stdout);
    }
  };

  while (generated < opt.count) {
    Update u = stream.next();
    ++generated;
    const std::string rk = routing_key_for(opt.routing_key, u.table);
    Batch& b = open[rk];
    if (b.n == 0) {
      b.first_id = u.id;
      if (opt.batch > 1) b.body += '[';
    } else {
      b.body += ',';
    }
    append_update(b.body, u);
    if (++b.n == opt.batch) send(rk, b);
  }
  for (auto& [rk, b] : open)
    if (b.n > 0) send(rk, b);

  const bool all = pub.drain(std::chrono::seconds(30));
  const double secs = std::chrono::duration<double>(Clock::now() - start).count();
  std::printf(
      "producer: published %llu messages, %llu updates (users %llu, items %llu, of which "
      "deletes %llu) in %.2f s: %.0f msg/s, %.0f updates/s\n",
      static_cast<unsigned long long>(messages), static_cast<unsigned long long>(sent_updates),
      static_cast<unsigned long long>(stream.count_users()), static_cast<unsigned long long>(stream.count_items()),
      static_cast<unsigned long long>(stream.count_deletes()), secs, messages / secs, sent_updates / secs);
  std::printf("producer: confirms: %llu acked, %llu nacked, %llu returned unroutable, %zu unconfirmed\n",
              static_cast<unsigned long long>(pub.acked()), static_cast<unsigned long long>(pub.nacked()),
              static_cast<unsigned long long>(pub.returned()), pub.unconfirmed());
  return all && pub.nacked() == 0 && pub.returned() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  CLI::App app{
      "Publishes a seeded stream of Larder feature updates (message format v1) to RabbitMQ "
      "with publisher confirms. Exit status 0 when every message was confirmed."};
  app.add_option("--url", opt.url, "amqp:// or amqps:// URL; the vhost defaults to /")->capture_default_str();
  app.add_option("--password-env", opt.password_env,
                 "environment variable holding the password (overrides one in the URL)")
      ->capture_default_str();
  app.add_option("--exchange", opt.exchange, "exchange to publish to")->capture_default_str();
  app.add_option("--exchange-type", opt.exchange_type, "type used when declaring the exchange")->capture_default_str();
  app.add_flag("!--no-declare", opt.declare_exchange, "do not declare the exchange (durable) before publishing");
  app.add_option("--routing-key", opt.routing_key,
                 "routing key; {table} is replaced by the table name, and then every message "
                 "holds updates of one table")
      ->capture_default_str();
  app.add_option("--cacert", opt.cacert, "amqps: CA certificate file (PEM)");
  app.add_option("--cert", opt.cert, "amqps: client certificate file (PEM)");
  app.add_option("--key", opt.key, "amqps: client private key file (PEM)");
  app.add_option("--count", opt.count, "updates to publish")->capture_default_str();
  app.add_option("--batch", opt.batch, "updates per message; 1 sends a JSON object, more an array")
      ->capture_default_str()
      ->check(CLI::Range(1u, 100000u));
  app.add_option("--rate", opt.rate, "messages per second, 0 for as fast as confirms allow")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--window", opt.window, "maximum unconfirmed messages in flight")
      ->capture_default_str()
      ->check(CLI::Range(1u, 1000000u));
  app.add_option("--seed", opt.seed, "seed of the stream; 0 picks one and prints it")->capture_default_str();
  app.add_option("--users", opt.users, "distinct users")->capture_default_str()->check(CLI::Range(1u, 999999u));
  app.add_option("--items", opt.items, "distinct items")->capture_default_str()->check(CLI::Range(1u, 99999u));
  app.add_option("--embedding-dims", opt.embedding_dims, "length of users.embedding")
      ->capture_default_str()
      ->check(CLI::Range(1u, 65536u));
  app.add_option("--print", opt.print, "message bodies to print in full")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  if (!opt.cert.empty() && opt.key.empty()) {
    std::fprintf(stderr, "producer: --cert needs --key\n");
    return 2;
  }
  try {
    return run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "producer: error: %s\n", e.what());
    return 1;
  }
}
