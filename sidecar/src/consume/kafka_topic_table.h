// The Kafka source's topic table (docs/sidecar.md, "Kafka", regex
// subscriptions): which topic holds which range of the lane's stored
// positions, when kafka.topics has a regex and the topics are not known
// before they appear. A small text file beside the segment,
// <segment dir>/.<segment name>.kafka-topics (a dot file, as the writer's
// temporary files: `larderctl ls` lists segments only):
//
//   larder-kafka-topics 1
//   id <FNV-1a 64 of the source's position id, 16 hex digits>
//   ranges <max_topics>
//   topic <range> <name>       one per topic given a range
//   retired <range>            a range holding positions of an unknown topic
//   end <FNV-1a 64 of every byte before this line, 16 hex digits>
//
// Invariant (crash safety): a range is given to a topic only by writing the
// whole table to a temporary file, syncing it and renaming it over the old
// one, before any partition of the topic is assigned. So every position
// stored in a range belongs to the topic the table names for it: a SIGKILL
// before the rename leaves the old table and no position of the new topic;
// after it, the new table. A range is never given to a second topic while
// the table lives (a topic that vanishes keeps its range, it may come back).
//
// Nothing read back is trusted: the file's size is bounded, each line is
// parsed strictly (ranges below `ranges`, names of Kafka's alphabet, no
// range or name twice) and the checksum must match; anything else is a
// damaged table, which the source replaces (its positions retired).
//
// Threads: the Kafka source's thread only.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace larder::sidecar {

// A Kafka topic name: 1..249 characters of a-z A-Z 0-9 . _ -
bool kafka_topic_name_ok(std::string_view name) noexcept;

class KafkaTopicTable {
 public:
  enum class Load : uint8_t {
    kLoaded = 0,       // the file was read and is for this source
    kMissing = 1,      // no file
    kOtherSource = 2,  // a table for another position id or range count (positions were cleared with it)
    kDamaged = 3,      // unreadable or failing a check (*why says which)
  };

  // `path`: the file; `source_id`: the source's position id; `ranges`:
  // kafka.max_topics.
  KafkaTopicTable(std::string path, std::string_view source_id, uint32_t ranges);

  // Reads the file into the table (empty unless kLoaded).
  Load load(std::string* why);
  // Parses a table file's bytes into the table (empty unless kLoaded; *why
  // says what failed when kDamaged).
  Load parse(std::string_view bytes, std::string* why);
  // The file's bytes for the current table.
  std::string serialize() const;
  // Writes the table (temporary file, fsync, rename, fsync of the directory).
  bool save(std::string* why) const;

  // The range of `topic`, or -1.
  int range_of(std::string_view topic) const noexcept;
  // The topic of range r ("" free or retired).
  const std::string& topic_of(uint32_t r) const { return topics_.at(r); }
  bool retired(uint32_t r) const { return retired_.at(r); }
  // Gives `topic` the lowest free range and saves the table before
  // returning it. -1 when every range is taken (*why empty) or the table
  // could not be saved (*why says why; the range is not given).
  int assign(const std::string& topic, std::string* why);
  // Marks range r as holding positions of no known topic (never given).
  void retire(uint32_t r);
  void clear();
  uint32_t ranges() const noexcept { return static_cast<uint32_t>(topics_.size()); }
  uint32_t used() const noexcept;
  const std::string& path() const noexcept { return path_; }

 private:
  std::string path_;
  uint64_t id_hash_;
  std::vector<std::string> topics_;  // per range
  std::vector<bool> retired_;        // per range
};

}  // namespace larder::sidecar
