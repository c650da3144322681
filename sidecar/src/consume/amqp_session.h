// One AMQP 0-9-1 connection to RabbitMQ through rabbitmq-c, with the
// sidecar's single channel, its topology and its consumer.
//
// rabbitmq-c state may not be shared between threads, so an AmqpSession is
// created, used and destroyed on one thread (the consumer thread); debug
// builds assert it on every call. A session is single-use: after any
// SessionError it is dead (rabbitmq-c's state cannot be recovered) and the
// caller destroys it and connects a new one.
#pragma once

#include <amqp.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "config/config.h"

namespace larder::sidecar {

enum class SessionFailure : uint8_t {
  kConnect = 0,        // TCP/TLS connect or login failed
  kTopology,           // a declare/bind/qos/consume was refused
  kSocket,             // socket error, EOF, or TLS failure while connected
  kHeartbeatTimeout,   // the broker went silent for two heartbeat intervals
  kChannelClosed,      // the broker closed our channel (reply code in the message)
  kConnectionClosed,   // the broker closed the connection
  kConsumerCancelled,  // the broker cancelled our consumer (queue deleted, node down)
  kProtocol,           // an unexpected frame or library error
};
const char* session_failure_name(SessionFailure f) noexcept;

class SessionError : public std::runtime_error {
 public:
  SessionError(SessionFailure failure, const std::string& message) : std::runtime_error(message), failure_(failure) {}
  SessionFailure failure() const noexcept { return failure_; }

 private:
  SessionFailure failure_;
};

enum class ConsumeEvent : uint8_t {
  kDelivery = 0,  // *envelope holds a message; destroy it with amqp_destroy_envelope
  kTimeout,       // nothing arrived within the timeout
  kHandled,       // a non-delivery frame arrived and was handled (ignored, or logged)
  kBlocked,       // connection.blocked (the broker is short of memory or disk)
  kUnblocked,     // connection.unblocked
};

// Stream queues: where to attach, and what the session learned of the stream.
struct StreamAttach {
  // Subscribe at this offset (a stored position); kNoOffset: the configured
  // stream_offset.
  uint64_t from = ~uint64_t{0};
  // Out: the stream's last offset just before the consumer attached
  // (probe_stream("last")), or ~0 when the stream was empty.
  uint64_t tail = ~uint64_t{0};
  // Out, when `from` is set and the stream is not empty: the first offset
  // it still holds (probe_stream("first")); else ~0.
  uint64_t first = ~uint64_t{0};
};

// The x-stream-offset header of a stream delivery; false when it is absent
// or not a non-negative integer.
bool stream_offset_of(const amqp_envelope_t& envelope, uint64_t* offset);

// The broker's answer to one dead-letter copy (publisher confirms on the
// dead-letter channel): `seq` is the publish's sequence number on that
// channel (1, 2, ...); `multiple` answers every publish up to it.
struct PublishConfirm {
  uint64_t seq = 0;
  bool multiple = false;
  bool ack = false;  // false: basic.nack, the broker did not take the copy
};

// Why and where a message was refused, for the headers of its dead letter.
struct DeadLetterNote {
  const char* reason = "";     // reject_reason_name()
  std::string_view detail;     // the decoder's or writer's one-line detail
  std::string_view update_id;  // the refused update's own "id"; "" when unknown (header left out)
  std::string_view key;        // the refused update's "key"; "" when unknown (header left out)
};

// Gives `conn` its socket (TLS when config.url is amqps://, with
// config.tls), connects within config.rpc_timeout_s, turns on TCP keepalive
// and sets the handshake and RPC timeouts: everything before the login. The
// daemon's session and `larderctl publish` connect through it. Throws
// SessionError(kConnect).
void open_amqp_socket(amqp_connection_state_t conn, const RabbitConfig& config);

class AmqpSession {
 public:
  // Connects, logs in with consumer_cancel_notify and connection.blocked
  // capabilities, opens channel 1, declares the topology (dead-letter
  // exchange and queue, the queue, the bindings), sets prefetch and starts
  // consuming. For a stream queue with `stream` given, first learns the
  // stream's tail (stream->tail) and, resuming at stream->from, the first
  // offset it holds (stream->first), then subscribes at stream->from.
  // Throws SessionError.
  static std::unique_ptr<AmqpSession> connect(const RabbitConfig& config, const std::string& consumer_tag,
                                              StreamAttach* stream = nullptr);

  ~AmqpSession();  // destroys the connection state without a handshake
  AmqpSession(const AmqpSession&) = delete;
  AmqpSession& operator=(const AmqpSession&) = delete;

  // Waits up to timeout_ms (> 0) for a frame. Heartbeats are serviced inside.
  // Deliveries on other channels than the consumer's (the tail probe's
  // leftovers) are dropped and reported as kHandled.
  // Throws SessionError on a fatal condition, including a basic.cancel from
  // the broker (kConsumerCancelled) unless cancel() was called first.
  ConsumeEvent next(int timeout_ms, amqp_envelope_t* envelope);

  // basic.ack with multiple=true up to `tag`. Throws SessionError.
  void ack_up_to(uint64_t tag);
  // basic.reject requeue=false: the broker dead-letters the message.
  void reject(uint64_t tag);

  // True when the dead-letter channel is open in confirm mode (every queue
  // type but streams, which have no dead-lettering).
  bool publishes_dead_letters() const noexcept { return dead_letter_channel_open_; }
  // Publishes a copy of `original` (same body and properties, its headers
  // plus x-larder-reason, x-larder-detail, x-larder-update-id and
  // x-larder-key) to the dead-letter exchange with the original's routing
  // key, on the dead-letter channel. Returns the publish's sequence number;
  // the broker's confirm arrives later through take_confirms(). Throws
  // SessionError.
  uint64_t publish_dead_letter(const amqp_envelope_t& original, const DeadLetterNote& note);
  // The confirms read since the last call (next() reads them), oldest first.
  // The caller clears the vector once it has handled them.
  std::vector<PublishConfirm>& confirms() noexcept { return confirms_; }

  // basic.cancel: the broker stops delivering; deliveries already sent still
  // arrive through next(). Throws SessionError.
  void cancel();
  // channel.close and connection.close handshakes, best effort.
  void close();

  bool cancelled() const noexcept { return cancel_sent_; }

 private:
  AmqpSession(const RabbitConfig& config, std::string consumer_tag);
  void open();
  void declare_topology(StreamAttach* stream);
  // A short-lived second consumer attached at `at`: "last" is delivered the
  // stream's last chunk, and the largest x-stream-offset it sees before a
  // short quiet spell is the tail; "first" returns the first delivery's
  // offset, the first message the stream still holds. ~0 when nothing arrives
  // (an empty stream). Each on its own channel, closed afterwards; its late
  // deliveries are dropped by next().
  uint64_t probe_stream(const std::string& at);
  void check_owner() const;
  [[noreturn]] void throw_reply(SessionFailure failure, const std::string& what, const amqp_rpc_reply_t& reply);
  void check_rpc(SessionFailure failure, const std::string& what);
  void check_status(int status, const std::string& what);
  ConsumeEvent handle_other_frame();

  const RabbitConfig& config_;
  std::string consumer_tag_;
  amqp_connection_state_t conn_ = nullptr;
  std::thread::id owner_;
  bool channel_open_ = false;
  bool cancel_sent_ = false;
  bool dead_letter_channel_open_ = false;
  uint64_t published_ = 0;  // publishes on the dead-letter channel (its confirm sequence)
  std::vector<PublishConfirm> confirms_;
  std::vector<amqp_table_entry_t> headers_;  // publish_dead_letter's scratch
};

}  // namespace larder::sidecar
