// YAML config loading and validation (see config.h). Main thread, at start.
#include "config.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <optional>
#include <set>
#include <sstream>

#include "larder/layout/error.h"

namespace larder::sidecar {
namespace {

[[noreturn]] void fail(const std::string& path, const std::string& problem) {
  throw ConfigError(path + ": " + problem);
}

std::string join(std::initializer_list<std::string_view> items) {
  std::string out;
  for (std::string_view s : items) {
    if (!out.empty()) out += ", ";
    out += s;
  }
  return out;
}

// Missing keys of a const node yield an "invalid" node, which throws on most
// calls (even assignment); IsDefined() is safe on it.
bool present(const YAML::Node& n) { return n.IsDefined() && !n.IsNull(); }

// A YAML mapping at `path` whose keys must come from `allowed`.
class MapNode {
 public:
  MapNode(const YAML::Node& node, std::string path, std::initializer_list<std::string_view> allowed)
      : node_(present(node) ? node : YAML::Node(YAML::NodeType::Map)), path_(std::move(path)) {
    if (!node_.IsMap()) fail(path_, "expected a mapping of keys (" + join(allowed) + ")");
    for (const auto& kv : node_) {
      const std::string key = kv.first.as<std::string>();
      bool ok = false;
      for (std::string_view a : allowed) ok = ok || a == key;
      if (!ok) fail(child(key), "unknown key (expected one of: " + join(allowed) + ")");
    }
  }

  std::string child(std::string_view key) const {
    return path_.empty() ? std::string(key) : path_ + "." + std::string(key);
  }
  const std::string& path() const { return path_; }
  bool has(const char* key) const { return present(node_[key]); }
  YAML::Node node(const char* key) const { return node_[key]; }

  std::string scalar(const char* key) const {
    const YAML::Node n = node_[key];
    if (!n.IsScalar()) fail(child(key), "expected a single value");
    return n.Scalar();
  }
  std::string str(const char* key, std::optional<std::string> fallback = std::nullopt) const {
    if (!has(key)) {
      if (!fallback) fail(child(key), "required");
      return *fallback;
    }
    return scalar(key);
  }
  bool boolean(const char* key, bool fallback) const {
    if (!has(key)) return fallback;
    bool out;
    if (!node_[key].IsScalar() || !YAML::convert<bool>::decode(node_[key], out)) {
      fail(child(key),
           fmt::format("expected true or false, got \"{}\"", node_[key].IsScalar() ? node_[key].Scalar() : "?"));
    }
    return out;
  }
  uint64_t integer(const char* key, std::optional<uint64_t> fallback, uint64_t min, uint64_t max) const {
    if (!has(key)) {
      if (!fallback) fail(child(key), "required");
      return *fallback;
    }
    const std::string s = scalar(key);
    uint64_t v = 0;
    bool ok = !s.empty() && s.size() <= 19;
    for (char c : s) ok = ok && c >= '0' && c <= '9';
    if (ok) v = std::stoull(s);
    if (!ok || v < min || v > max)
      fail(child(key), fmt::format("expected an integer in [{}, {}], got \"{}\"", min, max, s));
    return v;
  }
  double number(const char* key, double fallback, double min, double max, bool min_exclusive = false) const {
    if (!has(key)) return fallback;
    const std::string s = scalar(key);
    double v = 0;
    char* end = nullptr;
    v = std::strtod(s.c_str(), &end);
    const bool ok = !s.empty() && end == s.c_str() + s.size() && std::isfinite(v) &&
                    (min_exclusive ? v > min : v >= min) && v <= max;
    if (!ok)
      fail(child(key),
           fmt::format("expected a number in {}{}, {}], got \"{}\"", min_exclusive ? "(" : "[", min, max, s));
    return v;
  }

 private:
  YAML::Node node_;
  std::string path_;
};

template <class Fn>
void each_item(const YAML::Node& seq, const std::string& path, bool required, Fn&& fn) {
  if (!present(seq)) {
    if (required) fail(path, "required (a list)");
    return;
  }
  if (!seq.IsSequence()) fail(path, "expected a list");
  for (size_t i = 0; i < seq.size(); ++i) fn(seq[i], fmt::format("{}[{}]", path, i));
}

std::string read_file_trimmed(const std::string& path, const std::string& key) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(key, fmt::format("cannot read \"{}\"", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string s = ss.str();
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

void require_readable(const std::string& file, const std::string& key) {
  if (::access(file.c_str(), R_OK) != 0) fail(key, fmt::format("cannot read \"{}\"", file));
}

SegmentConfig parse_segment(const YAML::Node& node) {
  if (!node.IsDefined()) fail("segment", "required (name, dir, mode)");
  MapNode m(node, "segment", {"name", "dir", "mode"});
  SegmentConfig s;
  s.name = m.str("name");
  if (!layout::valid_identifier(s.name)) {
    fail(m.child("name"),
         fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes, not starting with '.' or '-')", s.name));
  }
  s.dir = m.str("dir", "/dev/shm");
  if (s.dir.empty() || s.dir[0] != '/') fail(m.child("dir"), "must be an absolute path");
  const std::string mode = m.str("mode", "0640");
  bool ok = !mode.empty() && mode.size() <= 4;
  uint32_t v = 0;
  for (char c : mode) {
    ok = ok && c >= '0' && c <= '7';
    v = v * 8 + static_cast<uint32_t>(c - '0');
  }
  if (!ok || v > 0777)
    fail(m.child("mode"), fmt::format("expected an octal file mode such as \"0640\", got \"{}\"", mode));
  if ((v & 0600) != 0600) fail(m.child("mode"), "the owner (the sidecar) needs read and write: use 06x0");
  s.mode = v;
  return s;
}

TableConfig parse_table(const YAML::Node& node, const std::string& path) {
  MapNode m(node, path, {"name", "key_max_len", "capacity", "max_load_factor", "allow_unknown_fields", "fields"});
  TableConfig t;
  t.spec.name = m.str("name");
  if (!layout::valid_identifier(t.spec.name)) {
    fail(m.child("name"), fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes)", t.spec.name));
  }
  t.spec.key_max_len = static_cast<uint32_t>(m.integer("key_max_len", 64, 1, layout::kMaxKeyLength));
  t.spec.capacity = m.integer("capacity", std::nullopt, 1, uint64_t{1} << 32);
  t.spec.max_load_factor = m.number("max_load_factor", 0.75, 0.0, 0.95, true);
  t.allow_unknown_fields = m.boolean("allow_unknown_fields", false);
  std::set<std::string> names;
  each_item(m.node("fields"), m.child("fields"), true, [&](const YAML::Node& fnode, const std::string& fpath) {
    MapNode f(fnode, fpath, {"name", "type", "dims", "max_len"});
    layout::FieldSpec spec;
    spec.name = f.str("name");
    if (!layout::valid_identifier(spec.name)) {
      fail(f.child("name"), fmt::format("\"{}\" is not a valid name ([A-Za-z0-9_.-], 1..63 bytes)", spec.name));
    }
    if (!names.insert(spec.name).second) fail(f.child("name"), fmt::format("duplicate field \"{}\"", spec.name));
    const std::string type = f.str("type");
    if (!layout::parse_field_type(type, &spec.type)) {
      fail(f.child("type"),
           fmt::format("unknown type \"{}\" (expected int64, float64, float32, bool, vector, string)", type));
    }
    if (spec.type == layout::FieldType::kFloat32Vector) {
      spec.count = static_cast<uint32_t>(f.integer("dims", std::nullopt, 1, layout::kMaxVectorDims));
    } else if (f.has("dims")) {
      fail(f.child("dims"), "only vector fields have dims");
    }
    if (spec.type == layout::FieldType::kString) {
      spec.count = static_cast<uint32_t>(f.integer("max_len", std::nullopt, 1, layout::kMaxStringLength));
    } else if (f.has("max_len")) {
      fail(f.child("max_len"), "only string fields have max_len");
    }
    t.spec.fields.push_back(std::move(spec));
  });
  if (t.spec.fields.empty()) fail(m.child("fields"), "a table needs at least one field");
  if (t.spec.fields.size() > layout::kMaxFields)
    fail(m.child("fields"), fmt::format("at most {} fields", layout::kMaxFields));
  return t;
}

QueueConfig parse_queue(const YAML::Node& node, const std::string& path) {
  if (!node.IsDefined()) fail(path, "required (name, type, ...)");
  MapNode m(node, path, {"name", "type", "durable", "delivery_limit", "stream_offset"});
  QueueConfig q;
  q.name = m.str("name");
  if (q.name.empty() || q.name.size() > 255) fail(m.child("name"), "must be 1..255 bytes");
  if (q.name.starts_with("amq.")) fail(m.child("name"), "names starting with \"amq.\" are reserved by RabbitMQ");
  const std::string type = m.str("type", "quorum");
  if (type == "quorum") {
    q.type = QueueType::kQuorum;
  } else if (type == "classic") {
    q.type = QueueType::kClassic;
  } else if (type == "stream") {
    q.type = QueueType::kStream;
  } else {
    fail(m.child("type"), fmt::format("unknown queue type \"{}\" (expected quorum, classic or stream)", type));
  }
  q.durable = m.boolean("durable", true);
  if (!q.durable && q.type != QueueType::kClassic)
    fail(m.child("durable"), fmt::format("{} queues are always durable", type));
  if (m.has("delivery_limit") && q.type != QueueType::kQuorum) {
    fail(m.child("delivery_limit"), "only quorum queues have a delivery limit");
  }
  q.delivery_limit = static_cast<uint32_t>(m.integer("delivery_limit", 5, 1, 1000000));
  if (m.has("stream_offset")) {
    if (q.type != QueueType::kStream) fail(m.child("stream_offset"), "only stream queues take a stream_offset");
    q.stream_offset = m.scalar("stream_offset");
    if (q.stream_offset != "first" && q.stream_offset != "last" && q.stream_offset != "next") {
      bool digits = !q.stream_offset.empty() && q.stream_offset.size() <= 18;
      for (char c : q.stream_offset) digits = digits && c >= '0' && c <= '9';
      if (!digits)
        fail(m.child("stream_offset"),
             fmt::format("expected first, last, next or an offset number, got \"{}\"", q.stream_offset));
      q.stream_offset_is_number = true;
      q.stream_offset_number = std::stoll(q.stream_offset);
    }
  }
  return q;
}

RabbitConfig parse_rabbitmq(const YAML::Node& node, const std::string& segment_name) {
  if (!node.IsDefined()) fail("rabbitmq", "required (url, password_env or password_file, queue, ...)");
  MapNode m(node, "rabbitmq",
            {"url", "password_env", "password_file", "queue", "bindings", "prefetch", "heartbeat_s", "tls",
             "dead_letter", "reconnect", "rpc_timeout_s", "drain_timeout_s", "connection_name"});
  RabbitConfig r;
  std::string error;
  const std::string url = m.str("url");
  if (!parse_amqp_url(url, &r.url, &error)) fail(m.child("url"), error);

  if (m.has("password_env") && m.has("password_file")) {
    fail("rabbitmq", "set password_env or password_file, not both");
  }
  if (m.has("password_env")) {
    const std::string var = m.scalar("password_env");
    const char* value = std::getenv(var.c_str());
    if (value == nullptr) fail(m.child("password_env"), fmt::format("environment variable {} is not set", var));
    r.password = value;
    r.password_source = "env " + var;
  } else if (m.has("password_file")) {
    const std::string file = m.scalar("password_file");
    r.password = read_file_trimmed(file, m.child("password_file"));
    r.password_source = "file " + file;
  } else {
    fail("rabbitmq",
         "set password_env (name of an environment variable) or password_file (a file holding "
         "the password); passwords are never taken from the URL or the command line");
  }

  r.queue = parse_queue(m.node("queue"), m.child("queue"));
  each_item(m.node("bindings"), m.child("bindings"), false, [&](const YAML::Node& bnode, const std::string& bpath) {
    MapNode b(bnode, bpath, {"exchange", "type", "routing_keys"});
    BindingConfig bc;
    bc.exchange = b.str("exchange");
    if (bc.exchange.empty()) fail(b.child("exchange"), "must not be empty (the default exchange cannot be bound)");
    bc.type = b.str("type", "topic");
    if (bc.type != "topic" && bc.type != "direct" && bc.type != "fanout" && bc.type != "headers") {
      fail(b.child("type"),
           fmt::format("unknown exchange type \"{}\" (expected topic, direct, fanout or headers)", bc.type));
    }
    each_item(b.node("routing_keys"), b.child("routing_keys"), false,
              [&](const YAML::Node& k, const std::string& kpath) {
                if (!k.IsScalar()) fail(kpath, "expected a routing key string");
                bc.routing_keys.push_back(k.Scalar());
              });
    if (bc.routing_keys.empty()) {
      if (bc.type == "topic" || bc.type == "direct") {
        fail(b.child("routing_keys"),
             fmt::format("a {} exchange needs at least one routing key (\"#\" matches all on topic)", bc.type));
      }
      bc.routing_keys.push_back("");
    }
    r.bindings.push_back(std::move(bc));
  });
  r.prefetch = static_cast<uint32_t>(m.integer("prefetch", 200, 1, 65535));
  r.heartbeat_s = static_cast<uint32_t>(m.integer("heartbeat_s", 15, 1, 600));

  {
    MapNode t(m.node("tls"), m.child("tls"), {"ca_file", "cert_file", "key_file", "verify_peer", "verify_hostname"});
    if (m.has("tls") && !r.url.tls) fail(m.child("tls"), "TLS settings need an amqps:// url");
    r.tls.ca_file = t.str("ca_file", "");
    r.tls.cert_file = t.str("cert_file", "");
    r.tls.key_file = t.str("key_file", "");
    r.tls.verify_peer = t.boolean("verify_peer", true);
    r.tls.verify_hostname = t.boolean("verify_hostname", r.tls.verify_peer);
    if (r.tls.verify_hostname && !r.tls.verify_peer) fail(t.child("verify_hostname"), "needs verify_peer: true");
    if (r.url.tls && r.tls.verify_peer && r.tls.ca_file.empty()) {
      fail(t.child("ca_file"),
           "required with amqps:// and verify_peer: true (the CA that signed the broker's certificate)");
    }
    if (r.tls.cert_file.empty() != r.tls.key_file.empty()) {
      fail(t.child(r.tls.cert_file.empty() ? "cert_file" : "key_file"),
           "cert_file and key_file go together (client certificate)");
    }
    if (!r.tls.ca_file.empty()) require_readable(r.tls.ca_file, t.child("ca_file"));
    if (!r.tls.cert_file.empty()) require_readable(r.tls.cert_file, t.child("cert_file"));
    if (!r.tls.key_file.empty()) require_readable(r.tls.key_file, t.child("key_file"));
  }
  {
    MapNode d(m.node("dead_letter"), m.child("dead_letter"), {"exchange", "queue"});
    r.dead_letter.exchange = d.str("exchange", r.queue.name + ".dlx");
    r.dead_letter.queue = d.str("queue", r.queue.name + ".dlq");
    if (r.dead_letter.exchange.empty() || r.dead_letter.exchange.starts_with("amq.")) {
      fail(d.child("exchange"), "must be a non-empty name not starting with \"amq.\"");
    }
    if (r.dead_letter.queue.empty() || r.dead_letter.queue == r.queue.name) {
      fail(d.child("queue"), "must be a non-empty name other than the queue's");
    }
  }
  {
    MapNode rc(m.node("reconnect"), m.child("reconnect"), {"base_s", "cap_s"});
    r.reconnect.base_s = rc.number("base_s", 0.5, 0.0, 60.0, true);
    r.reconnect.cap_s = rc.number("cap_s", 30.0, 0.0, 3600.0, true);
    if (r.reconnect.cap_s < r.reconnect.base_s) fail(rc.child("cap_s"), "must be >= base_s");
  }
  r.rpc_timeout_s = m.number("rpc_timeout_s", 10.0, 0.0, 600.0, true);
  r.drain_timeout_s = m.number("drain_timeout_s", 10.0, 0.0, 600.0);
  r.connection_name = m.str("connection_name", "larder-sidecar " + segment_name);
  return r;
}

MetricsConfig parse_metrics(const YAML::Node& node) {
  MapNode m(node, "metrics", {"enabled", "listen", "ready_max_lag_s"});
  MetricsConfig c;
  c.enabled = m.boolean("enabled", true);
  // A present but empty listen ("") disables the listener.
  const YAML::Node listen = m.node("listen");
  if (listen.IsDefined() && !listen.IsNull()) {
    if (!listen.IsScalar()) fail(m.child("listen"), "expected HOST:PORT, e.g. \"127.0.0.1:9464\"");
    c.listen = listen.Scalar();
  }
  if (c.listen.empty()) c.enabled = false;
  if (c.enabled) {
    // HOST:PORT, or [IPv6]:PORT.
    const size_t colon = c.listen.rfind(':');
    std::string host = colon == std::string::npos ? std::string() : c.listen.substr(0, colon);
    const std::string port = colon == std::string::npos ? std::string() : c.listen.substr(colon + 1);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    bool ok = !host.empty() && !port.empty() && port.size() <= 5 && host.find_first_of("[] ") == std::string::npos;
    for (char ch : port) ok = ok && ch >= '0' && ch <= '9';
    if (ok && std::stoul(port) > 65535) ok = false;
    if (!ok) {
      fail(m.child("listen"), fmt::format("expected HOST:PORT such as \"127.0.0.1:9464\" (port 0: any free port; "
                                          "\"\" turns the listener off), got \"{}\"",
                                          c.listen));
    }
    c.host = host;
    c.port = static_cast<uint16_t>(std::stoul(port));
  }
  c.ready_max_lag_s = m.number("ready_max_lag_s", 30.0, 0.0, 86400.0, true);
  return c;
}

Config parse_root(const YAML::Node& root) {
  if (!present(root)) fail("config", "empty file");
  MapNode m(root, "", {"segment", "tables", "rabbitmq", "logging", "metrics"});
  Config c;
  c.segment = parse_segment(m.node("segment"));
  std::set<std::string> names;
  each_item(m.node("tables"), "tables", true, [&](const YAML::Node& tnode, const std::string& tpath) {
    TableConfig t = parse_table(tnode, tpath);
    if (!names.insert(t.spec.name).second) fail(tpath + ".name", fmt::format("duplicate table \"{}\"", t.spec.name));
    c.tables.push_back(std::move(t));
  });
  if (c.tables.empty()) fail("tables", "at least one table is required");
  if (c.tables.size() > layout::kMaxTables) fail("tables", fmt::format("at most {} tables", layout::kMaxTables));
  c.rabbitmq = parse_rabbitmq(m.node("rabbitmq"), c.segment.name);
  {
    MapNode l(m.node("logging"), "logging", {"level", "json"});
    c.logging.level = l.str("level", "info");
    if (!valid_log_level(c.logging.level)) {
      fail("logging.level",
           fmt::format("unknown level \"{}\" (expected trace, debug, info, warn, error, critical, off)",
                       c.logging.level));
    }
    c.logging.json = l.boolean("json", false);
  }
  c.metrics = parse_metrics(m.node("metrics"));
  // The segment layer has the last word on sizes (e.g. a segment too large).
  try {
    c.schema().validate();
  } catch (const Error& e) {
    fail("tables", e.what());
  }
  return c;
}

}  // namespace

const char* queue_type_name(QueueType type) noexcept {
  switch (type) {
    case QueueType::kQuorum: return "quorum";
    case QueueType::kClassic: return "classic";
    case QueueType::kStream: return "stream";
  }
  return "unknown";
}

bool valid_log_level(std::string_view level) {
  for (std::string_view l : {"trace", "debug", "info", "warn", "error", "critical", "off"}) {
    if (l == level) return true;
  }
  return false;
}

layout::Schema Config::schema() const {
  layout::Schema s;
  for (const TableConfig& t : tables) s.tables.push_back(t.spec);
  return s;
}

std::vector<TableDecodeOptions> Config::decode_options() const {
  std::vector<TableDecodeOptions> out;
  for (const TableConfig& t : tables) out.push_back(TableDecodeOptions{t.allow_unknown_fields});
  return out;
}

Config parse_config(std::string_view yaml_text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(std::string(yaml_text));
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: line {} column {}: {}", origin, e.mark.line + 1, e.mark.column + 1, e.msg));
  }
  try {
    return parse_root(root);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}: line {}: {}", origin, e.mark.line + 1, e.msg));
  }
}

Config load_config_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(fmt::format("{}: cannot open the config file", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path);
}

}  // namespace larder::sidecar
