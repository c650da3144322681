// larder_kafka_mock_cluster: librdkafka's mock Kafka cluster (rdkafka_mock.h)
// as a process of its own, for the Kafka tests and bench. It speaks the Kafka
// protocol over TCP on loopback, like a real cluster.
//
//   larder_kafka_mock_cluster [--brokers N] [--topic NAME:PARTITIONS]...
//
// Prints "bootstrap <host:port,...>" on stdout once it listens, then reads
// commands from stdin, one per line, answering "ok" or "error <why>" to each:
//   down <broker id>          the broker drops its connections and refuses new ones
//   up <broker id>            it accepts connections again
//   errors <api key> <error code> <count>
//                             the next <count> requests of that API fail with
//                             that error (rd_kafka_mock_push_request_errors)
//   topic <name> <partitions> creates a topic
// It exits on "quit" or at the end of its input (the test that started it
// went away).
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <sstream>
#include <string>

int main(int argc, char** argv) {
  int brokers = 1;
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  // The mock cluster lives inside a client instance that never produces (and
  // needs no bootstrap servers: no warning about them).
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (rk == nullptr) {
    std::fprintf(stderr, "larder_kafka_mock_cluster: %s\n", err);
    return 1;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--brokers") == 0) brokers = std::atoi(argv[i + 1]);
  }
  if (brokers < 1 || brokers > 16) {
    std::fprintf(stderr, "larder_kafka_mock_cluster: --brokers takes 1..16\n");
    return 2;
  }
  rd_kafka_mock_cluster_t* cluster = rd_kafka_mock_cluster_new(rk, brokers);
  if (cluster == nullptr) {
    std::fprintf(stderr, "larder_kafka_mock_cluster: cannot create the mock cluster\n");
    return 1;
  }
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--topic") != 0) continue;
    const std::string spec = argv[i + 1];
    const size_t colon = spec.rfind(':');
    const int partitions = colon == std::string::npos ? 1 : std::atoi(spec.c_str() + colon + 1);
    const std::string name = spec.substr(0, colon);
    if (name.empty() || partitions < 1 ||
        rd_kafka_mock_topic_create(cluster, name.c_str(), partitions, 1) != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::fprintf(stderr, "larder_kafka_mock_cluster: cannot create topic \"%s\"\n", spec.c_str());
      return 2;
    }
  }
  std::printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(cluster));
  std::fflush(stdout);

  std::string line;
  while (std::getline(std::cin, line)) {
    std::istringstream in(line);
    std::string verb;
    in >> verb;
    rd_kafka_resp_err_t e = RD_KAFKA_RESP_ERR_NO_ERROR;
    bool known = true;
    if (verb == "quit") break;
    if (verb == "down" || verb == "up") {
      int id = 0;
      in >> id;
      e = verb == "down" ? rd_kafka_mock_broker_set_down(cluster, id) : rd_kafka_mock_broker_set_up(cluster, id);
    } else if (verb == "errors") {
      int api = 0, code = 0, count = 0;
      in >> api >> code >> count;
      if (count < 1 || count > 1000) {
        known = false;
      } else {
        for (int k = 0; k < count; ++k) {
          rd_kafka_mock_push_request_errors(cluster, static_cast<int16_t>(api), 1,
                                            static_cast<rd_kafka_resp_err_t>(code));
        }
      }
    } else if (verb == "topic") {
      std::string name;
      int partitions = 0;
      in >> name >> partitions;
      e = partitions < 1 ? RD_KAFKA_RESP_ERR__INVALID_ARG
                         : rd_kafka_mock_topic_create(cluster, name.c_str(), partitions, 1);
    } else {
      known = false;
    }
    if (!known) {
      std::printf("error unknown or malformed command: %s\n", line.c_str());
    } else if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
      std::printf("error %s\n", rd_kafka_err2str(e));
    } else {
      std::printf("ok\n");
    }
    std::fflush(stdout);
  }
  rd_kafka_mock_cluster_destroy(cluster);
  rd_kafka_destroy(rk);
  return 0;
}
