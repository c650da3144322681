// The rabbitmq-c session (see amqp_session.h). Every function runs on the
// consumer thread, the only thread that touches the connection state.
#include "consume/amqp_session.h"

#include <amqp_ssl_socket.h>
#include <amqp_tcp_socket.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cassert>
#include <chrono>
#include <cmath>
#include <cstring>
#include <vector>

namespace larder::sidecar {
namespace {

constexpr amqp_channel_t kChannel = 1;
// The stream probes (probe_stream): each on its own channel, so that late
// deliveries of one are never taken for the other's.
constexpr amqp_channel_t kTailProbeChannel = 2;
constexpr amqp_channel_t kFirstProbeChannel = 3;
// Dead-letter copies, published in confirm mode (publish_dead_letter). A
// channel of its own: confirm mode numbers every publish on its channel, and
// the consumer's channel must stay free of it.
constexpr amqp_channel_t kDeadLetterChannel = 4;
// The tail probe: after the first delivery, the last chunk's messages are
// taken as complete after this quiet spell (the broker sends a chunk in one
// go), or after kProbeMaxMs in all (a busy stream; the target is then a
// little behind the tail, which the lag bound covers).
constexpr int kProbeQuietMs = 100;
constexpr int kProbeMaxMs = 1000;
// How long an empty-looking stream is given to deliver its last chunk.
constexpr int kProbeFirstMs = 1500;
constexpr int kFrameMax = 131072;

timeval to_timeval(double seconds) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(seconds);
  tv.tv_usec = static_cast<suseconds_t>((seconds - std::floor(seconds)) * 1e6);
  return tv;
}

amqp_table_entry_t utf8_entry(const char* key, const std::string& value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_UTF8;
  e.value.value.bytes = amqp_bytes_t{value.size(), const_cast<char*>(value.data())};
  return e;
}

amqp_table_entry_t i64_entry(const char* key, int64_t value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_I64;
  e.value.value.i64 = value;
  return e;
}

amqp_table_entry_t bool_entry(const char* key, bool value) {
  amqp_table_entry_t e;
  e.key = amqp_cstring_bytes(key);
  e.value.kind = AMQP_FIELD_KIND_BOOLEAN;
  e.value.value.boolean = value ? 1 : 0;
  return e;
}

amqp_bytes_t bytes_of(const std::string& s) { return amqp_bytes_t{s.size(), const_cast<char*>(s.data())}; }

std::string bytes_to_string(amqp_bytes_t b) { return std::string(static_cast<const char*>(b.bytes), b.len); }

SessionFailure failure_of_status(int status) {
  switch (status) {
    case AMQP_STATUS_HEARTBEAT_TIMEOUT: return SessionFailure::kHeartbeatTimeout;
    case AMQP_STATUS_CONNECTION_CLOSED:
    case AMQP_STATUS_SOCKET_ERROR:
    case AMQP_STATUS_SOCKET_CLOSED:
    case AMQP_STATUS_TCP_ERROR:
    case AMQP_STATUS_SSL_ERROR:
    case AMQP_STATUS_TIMEOUT: return SessionFailure::kSocket;
    default: return SessionFailure::kProtocol;
  }
}

}  // namespace

const char* session_failure_name(SessionFailure f) noexcept {
  switch (f) {
    case SessionFailure::kConnect: return "connect";
    case SessionFailure::kTopology: return "topology";
    case SessionFailure::kSocket: return "socket";
    case SessionFailure::kHeartbeatTimeout: return "heartbeat_timeout";
    case SessionFailure::kChannelClosed: return "channel_closed";
    case SessionFailure::kConnectionClosed: return "connection_closed";
    case SessionFailure::kConsumerCancelled: return "consumer_cancelled";
    case SessionFailure::kProtocol: return "protocol";
  }
  return "unknown";
}

AmqpSession::AmqpSession(const RabbitConfig& config, std::string consumer_tag)
    : config_(config), consumer_tag_(std::move(consumer_tag)), owner_(std::this_thread::get_id()) {}

AmqpSession::~AmqpSession() {
  check_owner();
  if (conn_ != nullptr) amqp_destroy_connection(conn_);
}

void AmqpSession::check_owner() const {
  // rabbitmq-c: "You cannot share a socket, an amqp_connection_state_t, or a
  // channel between threads."
  assert(std::this_thread::get_id() == owner_ && "AmqpSession used from a thread that does not own it");
}

std::unique_ptr<AmqpSession> AmqpSession::connect(const RabbitConfig& config, const std::string& consumer_tag,
                                                  StreamAttach* stream) {
  std::unique_ptr<AmqpSession> s(new AmqpSession(config, consumer_tag));
  s->open();
  s->declare_topology(config.queue.type == QueueType::kStream ? stream : nullptr);
  return s;
}

namespace {

// The x-stream-offset header of a delivery; false when absent or not an integer.
bool header_offset(const amqp_basic_properties_t& p, uint64_t* offset) {
  if (!(p._flags & AMQP_BASIC_HEADERS_FLAG)) return false;
  for (int i = 0; i < p.headers.num_entries; ++i) {
    const amqp_table_entry_t& e = p.headers.entries[i];
    if (e.key.len != 15 || std::memcmp(e.key.bytes, "x-stream-offset", 15) != 0) continue;
    int64_t v = -1;
    switch (e.value.kind) {
      case AMQP_FIELD_KIND_I64: v = e.value.value.i64; break;
      case AMQP_FIELD_KIND_U64: v = e.value.value.u64 > INT64_MAX ? -1 : static_cast<int64_t>(e.value.value.u64); break;
      case AMQP_FIELD_KIND_I32: v = e.value.value.i32; break;
      case AMQP_FIELD_KIND_U32: v = e.value.value.u32; break;
      default: return false;
    }
    if (v < 0) return false;
    *offset = static_cast<uint64_t>(v);
    return true;
  }
  return false;
}

}  // namespace

bool stream_offset_of(const amqp_envelope_t& envelope, uint64_t* offset) {
  return header_offset(envelope.message.properties, offset);
}

uint64_t AmqpSession::probe_stream(const std::string& at) {
  check_owner();
  const bool last = at == "last";
  const amqp_channel_t channel = last ? kTailProbeChannel : kFirstProbeChannel;
  const std::string what = fmt::format("stream probe at \"{}\" on \"{}\"", at, config_.queue.name);
  amqp_channel_open(conn_, channel);
  check_rpc(SessionFailure::kTopology, "channel.open (" + what + ")");
  amqp_basic_qos(conn_, channel, 0, last ? 2000 : 1, 0);
  check_rpc(SessionFailure::kTopology, "basic.qos (" + what + ")");
  const std::string probe_tag = consumer_tag_ + "." + at;
  amqp_table_entry_t args[] = {utf8_entry("x-stream-offset", at)};
  amqp_basic_consume(conn_, channel, bytes_of(config_.queue.name), bytes_of(probe_tag), 0, /*no_ack=*/0, 0,
                     amqp_table_t{1, args});
  check_rpc(SessionFailure::kTopology, "basic.consume (" + what + ")");
  uint64_t found = ~uint64_t{0};
  const auto start = std::chrono::steady_clock::now();
  auto first_at = std::chrono::steady_clock::time_point::max();
  for (;;) {
    const auto now = std::chrono::steady_clock::now();
    int wait_ms = 0;
    if (first_at == std::chrono::steady_clock::time_point::max()) {
      wait_ms =
          kProbeFirstMs - static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(now - start).count());
    } else {
      const int left =
          kProbeMaxMs - static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(now - first_at).count());
      wait_ms = std::min(kProbeQuietMs, left);
    }
    if (wait_ms <= 0) break;
    amqp_maybe_release_buffers(conn_);
    amqp_envelope_t envelope;
    timeval tv{wait_ms / 1000, (wait_ms % 1000) * 1000};
    const amqp_rpc_reply_t r = amqp_consume_message(conn_, &envelope, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
      uint64_t offset = 0;
      const bool mine = envelope.channel == channel && header_offset(envelope.message.properties, &offset);
      if (mine) {
        if (found == ~uint64_t{0} || offset > found) found = offset;
        if (first_at == std::chrono::steady_clock::time_point::max()) first_at = std::chrono::steady_clock::now();
        amqp_basic_ack(conn_, channel, envelope.delivery_tag, 0);
      }
      amqp_destroy_envelope(&envelope);
      if (mine && !last) break;  // "first": the first delivery is the answer
      continue;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT) break;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      handle_other_frame();
      continue;
    }
    throw_reply(SessionFailure::kTopology, what, r);
  }
  // channel.close cancels the probe's consumer; deliveries already on the
  // wire for its channel are queued by rabbitmq-c and dropped by next().
  amqp_channel_close(conn_, channel, AMQP_REPLY_SUCCESS);
  check_rpc(SessionFailure::kTopology, "channel.close (" + what + ")");
  return found;
}

void AmqpSession::throw_reply(SessionFailure failure, const std::string& what, const amqp_rpc_reply_t& reply) {
  switch (reply.reply_type) {
    case AMQP_RESPONSE_NORMAL: break;
    case AMQP_RESPONSE_NONE: throw SessionError(failure, what + ": no reply from the broker");
    case AMQP_RESPONSE_LIBRARY_EXCEPTION: {
      const SessionFailure f =
          failure == SessionFailure::kConnect || failure == SessionFailure::kTopology
              ? (reply.library_error == AMQP_STATUS_HEARTBEAT_TIMEOUT ? SessionFailure::kHeartbeatTimeout : failure)
              : failure_of_status(reply.library_error);
      throw SessionError(f, fmt::format("{}: {}", what, amqp_error_string2(reply.library_error)));
    }
    case AMQP_RESPONSE_SERVER_EXCEPTION:
      if (reply.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
        const auto* m = static_cast<const amqp_connection_close_t*>(reply.reply.decoded);
        throw SessionError(failure == SessionFailure::kConnect ? failure : SessionFailure::kConnectionClosed,
                           fmt::format("{}: broker closed the connection: {} {}", what, m->reply_code,
                                       bytes_to_string(m->reply_text)));
      }
      if (reply.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
        const auto* m = static_cast<const amqp_channel_close_t*>(reply.reply.decoded);
        throw SessionError(
            failure == SessionFailure::kTopology ? failure : SessionFailure::kChannelClosed,
            fmt::format("{}: broker closed the channel: {} {}", what, m->reply_code, bytes_to_string(m->reply_text)));
      }
      throw SessionError(failure, fmt::format("{}: unexpected server method 0x{:08x}", what, reply.reply.id));
  }
  throw SessionError(failure, what + ": failed");
}

void AmqpSession::check_rpc(SessionFailure failure, const std::string& what) {
  const amqp_rpc_reply_t reply = amqp_get_rpc_reply(conn_);
  if (reply.reply_type != AMQP_RESPONSE_NORMAL) throw_reply(failure, what, reply);
}

void AmqpSession::check_status(int status, const std::string& what) {
  if (status != AMQP_STATUS_OK) {
    throw SessionError(failure_of_status(status), fmt::format("{}: {}", what, amqp_error_string2(status)));
  }
}

void open_amqp_socket(amqp_connection_state_t conn, const RabbitConfig& config) {
  amqp_socket_t* socket = nullptr;
  if (config.url.tls) {
    socket = amqp_ssl_socket_new(conn);
    if (socket == nullptr) throw SessionError(SessionFailure::kConnect, "cannot create a TLS socket");
    amqp_ssl_socket_set_verify_peer(socket, config.tls.verify_peer ? 1 : 0);
    amqp_ssl_socket_set_verify_hostname(socket, config.tls.verify_hostname ? 1 : 0);
    if (!config.tls.ca_file.empty() &&
        amqp_ssl_socket_set_cacert(socket, config.tls.ca_file.c_str()) != AMQP_STATUS_OK) {
      throw SessionError(SessionFailure::kConnect,
                         fmt::format("rabbitmq.tls.ca_file: cannot load \"{}\"", config.tls.ca_file));
    }
    if (!config.tls.cert_file.empty() &&
        amqp_ssl_socket_set_key(socket, config.tls.cert_file.c_str(), config.tls.key_file.c_str()) != AMQP_STATUS_OK) {
      throw SessionError(SessionFailure::kConnect,
                         fmt::format("rabbitmq.tls: cannot load cert_file \"{}\" / key_file \"{}\"",
                                     config.tls.cert_file, config.tls.key_file));
    }
  } else {
    socket = amqp_tcp_socket_new(conn);
    if (socket == nullptr) throw SessionError(SessionFailure::kConnect, "cannot create a TCP socket");
  }

  timeval connect_timeout = to_timeval(config.rpc_timeout_s);
  const int status = amqp_socket_open_noblock(socket, config.url.host.c_str(), config.url.port, &connect_timeout);
  if (status != AMQP_STATUS_OK) {
    throw SessionError(SessionFailure::kConnect, fmt::format("connect to {}:{}: {}", config.url.host, config.url.port,
                                                             amqp_error_string2(status)));
  }
  // TCP keepalive: a fallback for rabbitmq-c's partial heartbeat support.
  const int fd = amqp_get_sockfd(conn);
  const int on = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
  const int idle = 30, interval = 10, count = 3;
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
  ::setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &count, sizeof(count));

  timeval rpc_timeout = to_timeval(config.rpc_timeout_s);
  amqp_set_handshake_timeout(conn, &rpc_timeout);
  amqp_set_rpc_timeout(conn, &rpc_timeout);
}

void AmqpSession::open() {
  check_owner();
  conn_ = amqp_new_connection();
  if (conn_ == nullptr) throw SessionError(SessionFailure::kConnect, "amqp_new_connection failed (out of memory)");

  open_amqp_socket(conn_, config_);

  // Advertise consumer_cancel_notify so a deleted queue cancels our consumer
  // (instead of silently starving it), and connection.blocked. rabbitmq-c
  // merges these with its default capabilities.
  amqp_table_entry_t caps[] = {bool_entry("consumer_cancel_notify", true), bool_entry("connection.blocked", true)};
  const std::string product = "larder-sidecar";
  amqp_table_entry_t props[3];
  props[0].key = amqp_cstring_bytes("capabilities");
  props[0].value.kind = AMQP_FIELD_KIND_TABLE;
  props[0].value.value.table = amqp_table_t{2, caps};
  props[1] = utf8_entry("connection_name", config_.connection_name);
  props[2] = utf8_entry("product", product);
  const amqp_table_t properties{3, props};
  const amqp_rpc_reply_t login = amqp_login_with_properties(
      conn_, config_.url.vhost.c_str(), 0, kFrameMax, static_cast<int>(config_.heartbeat_s), &properties,
      AMQP_SASL_METHOD_PLAIN, config_.url.user.c_str(), config_.password.c_str());
  if (login.reply_type != AMQP_RESPONSE_NORMAL) {
    throw_reply(SessionFailure::kConnect,
                fmt::format("login to {} as \"{}\" (password from {})", config_.url.to_string(), config_.url.user,
                            config_.password_source),
                login);
  }
  amqp_channel_open(conn_, kChannel);
  check_rpc(SessionFailure::kConnect, "channel.open");
  channel_open_ = true;
}

void AmqpSession::declare_topology(StreamAttach* stream) {
  check_owner();
  const QueueConfig& q = config_.queue;
  const bool dead_letters = q.type != QueueType::kStream;  // streams have no dead-lettering
  const std::string queue_type = queue_type_name(q.type);

  if (dead_letters) {
    // The dead-letter exchange is a fanout: every rejected message reaches the
    // dead-letter queue whatever its routing key.
    amqp_exchange_declare(conn_, kChannel, bytes_of(config_.dead_letter.exchange), amqp_cstring_bytes("fanout"), 0, 1,
                          0, 0, amqp_empty_table);
    check_rpc(SessionFailure::kTopology,
              fmt::format("declare dead-letter exchange \"{}\"", config_.dead_letter.exchange));
    const std::string dlq_type = q.type == QueueType::kQuorum ? "quorum" : "classic";
    amqp_table_entry_t dlq_args[] = {utf8_entry("x-queue-type", dlq_type)};
    amqp_queue_declare(conn_, kChannel, bytes_of(config_.dead_letter.queue), 0, 1, 0, 0, amqp_table_t{1, dlq_args});
    check_rpc(SessionFailure::kTopology, fmt::format("declare dead-letter queue \"{}\"", config_.dead_letter.queue));
    amqp_queue_bind(conn_, kChannel, bytes_of(config_.dead_letter.queue), bytes_of(config_.dead_letter.exchange),
                    amqp_cstring_bytes(""), amqp_empty_table);
    check_rpc(SessionFailure::kTopology, "bind the dead-letter queue");
  }

  std::vector<amqp_table_entry_t> args;
  args.push_back(utf8_entry("x-queue-type", queue_type));
  if (dead_letters) args.push_back(utf8_entry("x-dead-letter-exchange", config_.dead_letter.exchange));
  if (q.type == QueueType::kQuorum) args.push_back(i64_entry("x-delivery-limit", q.delivery_limit));
  amqp_queue_declare(conn_, kChannel, bytes_of(q.name), 0, q.durable ? 1 : 0, 0, 0,
                     amqp_table_t{static_cast<int>(args.size()), args.data()});
  check_rpc(SessionFailure::kTopology,
            fmt::format("declare {} queue \"{}\" (if it exists with other arguments, delete it or fix the config)",
                        queue_type, q.name));

  for (const BindingConfig& b : config_.bindings) {
    if (!b.exchange.starts_with("amq.")) {  // amq.* exist already and may not be declared
      amqp_exchange_declare(conn_, kChannel, bytes_of(b.exchange), bytes_of(b.type), 0, 1, 0, 0, amqp_empty_table);
      check_rpc(SessionFailure::kTopology, fmt::format("declare {} exchange \"{}\"", b.type, b.exchange));
    }
    for (const std::string& key : b.routing_keys) {
      amqp_queue_bind(conn_, kChannel, bytes_of(q.name), bytes_of(b.exchange), bytes_of(key), amqp_empty_table);
      check_rpc(SessionFailure::kTopology, fmt::format("bind \"{}\" to \"{}\" with \"{}\"", q.name, b.exchange, key));
    }
  }

  if (dead_letters) {
    amqp_channel_open(conn_, kDeadLetterChannel);
    check_rpc(SessionFailure::kTopology, "channel.open (dead letters)");
    amqp_confirm_select(conn_, kDeadLetterChannel);
    check_rpc(SessionFailure::kTopology, "confirm.select (dead letters)");
    dead_letter_channel_open_ = true;
  }

  amqp_basic_qos(conn_, kChannel, 0, static_cast<uint16_t>(config_.prefetch), 0);
  check_rpc(SessionFailure::kTopology, "basic.qos");

  std::vector<amqp_table_entry_t> consume_args;
  if (q.type == QueueType::kStream) {
    if (stream != nullptr) {
      stream->tail = probe_stream("last");
      // Resuming at a stored offset: is it still in the stream?
      if (stream->tail != ~uint64_t{0} && stream->from != ~uint64_t{0}) stream->first = probe_stream("first");
    }
    if (stream != nullptr && stream->from != ~uint64_t{0}) {
      consume_args.push_back(i64_entry("x-stream-offset", static_cast<int64_t>(stream->from)));
    } else {
      consume_args.push_back(q.stream_offset_is_number ? i64_entry("x-stream-offset", q.stream_offset_number)
                                                       : utf8_entry("x-stream-offset", q.stream_offset));
    }
  }
  amqp_basic_consume(conn_, kChannel, bytes_of(q.name), bytes_of(consumer_tag_), 0, /*no_ack=*/0, 0,
                     amqp_table_t{static_cast<int>(consume_args.size()), consume_args.data()});
  check_rpc(SessionFailure::kTopology, fmt::format("basic.consume on \"{}\"", q.name));
}

ConsumeEvent AmqpSession::next(int timeout_ms, amqp_envelope_t* envelope) {
  check_owner();
  assert(timeout_ms > 0 && "a zero or infinite timeout breaks heartbeat handling in rabbitmq-c");
  amqp_maybe_release_buffers(conn_);
  timeval tv{timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  const amqp_rpc_reply_t r = amqp_consume_message(conn_, envelope, &tv, 0);
  if (r.reply_type == AMQP_RESPONSE_NORMAL) {
    if (envelope->channel == kChannel) return ConsumeEvent::kDelivery;
    amqp_destroy_envelope(envelope);  // the tail probe's, after its channel closed
    return ConsumeEvent::kHandled;
  }
  if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION) {
    if (r.library_error == AMQP_STATUS_TIMEOUT) return ConsumeEvent::kTimeout;
    if (r.library_error == AMQP_STATUS_UNEXPECTED_STATE) return handle_other_frame();
  }
  throw_reply(SessionFailure::kSocket, "consume", r);
}

ConsumeEvent AmqpSession::handle_other_frame() {
  // amqp_consume_message put a non-delivery frame back; read and handle it
  // (the pattern of rabbitmq-c's examples/amqp_consumer.c).
  amqp_frame_t frame;
  const int status = amqp_simple_wait_frame(conn_, &frame);
  check_status(status, "reading a frame");
  if (frame.frame_type != AMQP_FRAME_METHOD) {
    spdlog::debug("amqp: ignoring a frame of type {} on channel {}", frame.frame_type, frame.channel);
    return ConsumeEvent::kHandled;
  }
  switch (frame.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD:
      if (frame.channel == kDeadLetterChannel) {
        const auto* m = static_cast<const amqp_basic_ack_t*>(frame.payload.method.decoded);
        confirms_.push_back(PublishConfirm{m->delivery_tag, m->multiple != 0, true});
      }
      return ConsumeEvent::kHandled;
    case AMQP_BASIC_NACK_METHOD:
      if (frame.channel == kDeadLetterChannel) {
        const auto* m = static_cast<const amqp_basic_nack_t*>(frame.payload.method.decoded);
        confirms_.push_back(PublishConfirm{m->delivery_tag, m->multiple != 0, false});
      }
      return ConsumeEvent::kHandled;
    case AMQP_BASIC_RETURN_METHOD: {
      amqp_message_t message;
      const amqp_rpc_reply_t r = amqp_read_message(conn_, frame.channel, &message, 0);
      if (r.reply_type != AMQP_RESPONSE_NORMAL) throw_reply(SessionFailure::kProtocol, "reading a returned message", r);
      amqp_destroy_message(&message);
      return ConsumeEvent::kHandled;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
      const auto* m = static_cast<const amqp_channel_close_t*>(frame.payload.method.decoded);
      const std::string text =
          fmt::format("broker closed the channel: {} {}", m->reply_code, bytes_to_string(m->reply_text));
      amqp_channel_close_ok_t ok{};
      amqp_send_method(conn_, frame.channel, AMQP_CHANNEL_CLOSE_OK_METHOD, &ok);
      channel_open_ = false;
      throw SessionError(SessionFailure::kChannelClosed, text);
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
      const auto* m = static_cast<const amqp_connection_close_t*>(frame.payload.method.decoded);
      const std::string text =
          fmt::format("broker closed the connection: {} {}", m->reply_code, bytes_to_string(m->reply_text));
      amqp_connection_close_ok_t ok{};
      amqp_send_method(conn_, 0, AMQP_CONNECTION_CLOSE_OK_METHOD, &ok);
      channel_open_ = false;
      throw SessionError(SessionFailure::kConnectionClosed, text);
    }
    case AMQP_BASIC_CANCEL_METHOD: {
      const auto* m = static_cast<const amqp_basic_cancel_t*>(frame.payload.method.decoded);
      if (cancel_sent_) return ConsumeEvent::kHandled;  // crossed with our own cancel
      throw SessionError(
          SessionFailure::kConsumerCancelled,
          fmt::format("the broker cancelled consumer \"{}\" (queue \"{}\" deleted, or its node went down)",
                      bytes_to_string(m->consumer_tag), config_.queue.name));
    }
    case AMQP_BASIC_CANCEL_OK_METHOD: return ConsumeEvent::kHandled;
    case AMQP_CONNECTION_BLOCKED_METHOD: return ConsumeEvent::kBlocked;
    case AMQP_CONNECTION_UNBLOCKED_METHOD: return ConsumeEvent::kUnblocked;
    default:
      spdlog::debug("amqp: ignoring method 0x{:08x} on channel {}", frame.payload.method.id, frame.channel);
      return ConsumeEvent::kHandled;
  }
}

void AmqpSession::ack_up_to(uint64_t tag) {
  check_owner();
  check_status(amqp_basic_ack(conn_, kChannel, tag, /*multiple=*/1), fmt::format("basic.ack {}", tag));
}

void AmqpSession::reject(uint64_t tag) {
  check_owner();
  check_status(amqp_basic_reject(conn_, kChannel, tag, /*requeue=*/0), fmt::format("basic.reject {}", tag));
}

uint64_t AmqpSession::publish_dead_letter(const amqp_envelope_t& original, const DeadLetterNote& note) {
  check_owner();
  assert(dead_letter_channel_open_);
  // The original's headers, without x-larder-* ones (a message replayed from
  // the dead-letter queue carries them), then this refusal's.
  headers_.clear();
  const amqp_basic_properties_t& op = original.message.properties;
  if (op._flags & AMQP_BASIC_HEADERS_FLAG) {
    for (int i = 0; i < op.headers.num_entries; ++i) {
      const amqp_table_entry_t& e = op.headers.entries[i];
      const std::string_view k(static_cast<const char*>(e.key.bytes), e.key.len);
      if (!k.starts_with("x-larder-")) headers_.push_back(e);
    }
  }
  auto text = [](const char* key, std::string_view value) {
    amqp_table_entry_t e;
    e.key = amqp_cstring_bytes(key);
    e.value.kind = AMQP_FIELD_KIND_UTF8;
    e.value.value.bytes = amqp_bytes_t{value.size(), const_cast<char*>(value.data())};
    return e;
  };
  headers_.push_back(text("x-larder-reason", note.reason));
  headers_.push_back(text("x-larder-detail", note.detail));
  if (!note.update_id.empty()) headers_.push_back(text("x-larder-update-id", note.update_id));
  if (!note.key.empty()) headers_.push_back(text("x-larder-key", note.key));
  amqp_basic_properties_t props = op;  // shallow: the envelope outlives the publish call
  props._flags |= AMQP_BASIC_HEADERS_FLAG;
  props.headers = amqp_table_t{static_cast<int>(headers_.size()), headers_.data()};
  const int status =
      amqp_basic_publish(conn_, kDeadLetterChannel, bytes_of(config_.dead_letter.exchange), original.routing_key,
                         /*mandatory=*/0, /*immediate=*/0, &props, original.message.body);
  check_status(status, fmt::format("basic.publish to dead-letter exchange \"{}\"", config_.dead_letter.exchange));
  return ++published_;
}

void AmqpSession::cancel() {
  check_owner();
  if (cancel_sent_) return;
  cancel_sent_ = true;
  // An RPC: deliveries that arrive before cancel-ok are queued by rabbitmq-c
  // and come out of next() afterwards.
  amqp_basic_cancel(conn_, kChannel, bytes_of(consumer_tag_));
  check_rpc(SessionFailure::kProtocol, "basic.cancel");
}

void AmqpSession::close() {
  check_owner();
  if (conn_ == nullptr) return;
  if (channel_open_) {
    amqp_channel_close(conn_, kChannel, AMQP_REPLY_SUCCESS);
    channel_open_ = false;
  }
  amqp_connection_close(conn_, AMQP_REPLY_SUCCESS);
}

}  // namespace larder::sidecar
