// An inference process reading its features from Larder.
//
//   larder-inference-reader --segment larder-demo [--dir /dev/shm]
//                           [--users N] [--items N] [--max-age-ms MS]
//                           [--watch SECONDS [--watch-key KEY]]
//
// --watch prints one user's rolling features (the sidecar's windowed
// aggregates) once a second for SECONDS: they rise while events stream in
// and decay once they stop, with no new event needed.
//
// It does what a model server does per request: resolve tables and fields
// once at start-up, then for each request look up the user's row and a batch
// of candidate items with get_many, check freshness, and turn the features
// into a score. Here the "model" is a fixed logistic regression over a few
// features, and the output shows the values and how old they are.
//
// Only the client library is linked: no broker, no network, no locks.
#include <larder/client.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

struct Options {
  std::string segment = "larder-demo";
  std::string dir = "/dev/shm";
  int users = 5;
  int items = 8;
  int64_t max_age_ms = 0;
  int watch_seconds = 0;
  std::string watch_key = "u000000";
};

void usage(const char* argv0) {
  std::fprintf(stderr,
               "usage: %s [--segment NAME] [--dir DIR] [--users N] [--items N] [--max-age-ms MS]\n"
               "          [--watch SECONDS [--watch-key KEY]]\n"
               "Reads users and candidate items from a Larder segment and scores them.\n",
               argv0);
}

bool parse(int argc, char** argv, Options* o) {
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> const char* { return i + 1 < argc ? argv[++i] : nullptr; };
    const char* v = nullptr;
    if (a == "--help" || a == "-h") return false;
    if (a == "--segment" && (v = value())) {
      o->segment = v;
    } else if (a == "--dir" && (v = value())) {
      o->dir = v;
    } else if (a == "--users" && (v = value())) {
      o->users = std::atoi(v);
    } else if (a == "--items" && (v = value())) {
      o->items = std::atoi(v);
    } else if (a == "--max-age-ms" && (v = value())) {
      o->max_age_ms = std::atoll(v);
    } else if (a == "--watch" && (v = value())) {
      o->watch_seconds = std::atoi(v);
    } else if (a == "--watch-key" && (v = value())) {
      o->watch_key = v;
    } else {
      std::fprintf(stderr, "unknown or incomplete argument: %s\n", a.c_str());
      return false;
    }
  }
  return true;
}

std::string age_text(int64_t ms) {
  char b[32];
  if (ms < 1000) {
    std::snprintf(b, sizeof b, "%lld ms", static_cast<long long>(ms));
  } else {
    std::snprintf(b, sizeof b, "%.1f s", ms / 1000.0);
  }
  return b;
}

std::string key(char prefix, int width, int i) {
  char b[16];
  std::snprintf(b, sizeof b, "%c%0*d", prefix, width, i);
  return b;
}

// The row's aggregate fields as "name=value" pairs ("-" for an empty window).
std::string rolling_text(const larder::Table& t, const larder::RowView& row) {
  std::string out;
  for (const larder::Field& f : t.fields()) {
    if (!f.aggregate) continue;
    char b[96];
    if (!row.valid(f)) {
      std::snprintf(b, sizeof b, " %.*s=-", static_cast<int>(f.name.size()), f.name.data());
    } else if (f.type == larder::FieldType::kInt64) {
      std::snprintf(b, sizeof b, " %.*s=%lld", static_cast<int>(f.name.size()), f.name.data(),
                    static_cast<long long>(row.i64(f)));
    } else {
      std::snprintf(b, sizeof b, " %.*s=%.2f", static_cast<int>(f.name.size()), f.name.data(), row.as_f64(f));
    }
    out += b;
  }
  return out;
}

// --watch: one user's rolling features, once a second.
int watch(const larder::Segment& seg, const larder::Table& users, const Options& opt) {
  larder::Row row = users.make_row();
  std::printf("rolling features of %s, once a second for %d s (the writer %s):\n", opt.watch_key.c_str(),
              opt.watch_seconds, seg.writer_alive() ? "is alive" : "is NOT alive");
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s <= opt.watch_seconds; ++s) {
    std::this_thread::sleep_until(start + std::chrono::seconds(s));
    const larder::ReadResult r = users.get(opt.watch_key, row);
    if (!r.found()) {
      std::printf("  t=%2ds %s: %s\n", s, opt.watch_key.c_str(), larder::status_name(r.status));
      continue;
    }
    std::printf("  t=%2ds last event %-8s ago:%s\n", s, age_text(r.age_ms()).c_str(), rolling_text(users, row).c_str());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  if (!parse(argc, argv, &opt)) {
    usage(argv[0]);
    return 2;
  }
  try {
    // Start-up: open read-only, resolve names once.
    larder::Segment seg = larder::Segment::open(opt.segment, larder::ClientOptions{opt.dir});
    larder::Table users = seg.table("users");
    larder::Table items = seg.table("items");
    const larder::Field clicks = users.field("clicks_1h", larder::FieldType::kInt64);
    const larder::Field spend = users.field("spend_usd", larder::FieldType::kFloat64);
    const larder::Field premium = users.field("is_premium", larder::FieldType::kBool);
    const larder::Field country = users.field("country", larder::FieldType::kString);
    const larder::Field embedding = users.field("embedding", larder::FieldType::kFloat32Vector);
    const larder::Field price = items.field("price", larder::FieldType::kFloat64);
    const larder::Field ctr = items.field("ctr", larder::FieldType::kFloat32);
    const larder::Field category = items.field("category", larder::FieldType::kString);

    if (opt.watch_seconds > 0) return watch(seg, users, opt);

    const larder::SegmentInfo info = seg.info();
    std::printf("segment %s: writer pid %llu %s (heartbeat %lld ms ago), %llu updates applied\n", opt.segment.c_str(),
                static_cast<unsigned long long>(info.writer_pid), seg.writer_alive() ? "alive" : "NOT alive",
                static_cast<long long>(info.heartbeat_age_ms), static_cast<unsigned long long>(info.updates_applied));
    std::printf("users: %llu keys, items: %llu keys\n\n", static_cast<unsigned long long>(users.stats().live_keys),
                static_cast<unsigned long long>(items.stats().live_keys));

    // Per-request buffers: allocated once, reused by every request.
    larder::Row user_row = users.make_row();
    larder::RowBatch item_rows = items.make_batch(static_cast<size_t>(opt.items));
    std::vector<larder::ReadResult> item_results(static_cast<size_t>(opt.items));
    std::vector<std::string> item_keys;
    std::vector<std::string_view> item_views;
    for (int i = 0; i < opt.items; ++i) item_keys.push_back(key('i', 5, i));
    for (const std::string& k : item_keys) item_views.emplace_back(k);
    const larder::ReadOptions read{.max_age_ms = opt.max_age_ms};

    for (int u = 0; u < opt.users; ++u) {
      const std::string user_key = key('u', 6, u);
      const auto t0 = std::chrono::steady_clock::now();
      const larder::ReadResult ur = users.get(user_key, user_row, read);
      items.get_many(item_views, item_rows, item_results, read);
      const auto lookup_ns =
          std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();

      const int64_t now = larder::now_unix_ms();
      if (!ur.found()) {
        std::printf("%s: %s\n", user_key.c_str(), larder::status_name(ur.status));
        continue;
      }
      double norm = 0;
      for (float x : user_row.vector(embedding)) norm += double{x} * x;
      std::printf("%s [%s, age %s]: clicks_1h=%lld spend_usd=%.2f premium=%s country=%.*s |embedding|=%.3f\n",
                  user_key.c_str(), larder::status_name(ur.status), age_text(ur.age_ms(now)).c_str(),
                  static_cast<long long>(user_row.i64(clicks)), user_row.f64(spend),
                  user_row.valid(premium) ? (user_row.boolean(premium) ? "yes" : "no") : "?",
                  static_cast<int>(user_row.string(country).size()), user_row.string(country).data(), std::sqrt(norm));
      if (const std::string rolling = rolling_text(users, user_row); !rolling.empty()) {
        // Windowed aggregates: current as of the computed-at instant, which
        // a running sidecar keeps near now even for a user with no recent
        // event; bound it with {.age_of = larder::AgeOf::kComputed}.
        std::printf("    rolling (computed %s ago):%s\n", age_text(ur.computed_age_ms(now)).c_str(), rolling.c_str());
      }
      // The model: p(click) = sigmoid(w . x + b) over user and item features.
      for (int i = 0; i < opt.items; ++i) {
        const larder::ReadResult& r = item_results[static_cast<size_t>(i)];
        if (!r.found()) {
          std::printf("    %s: %s\n", item_keys[static_cast<size_t>(i)].c_str(), larder::status_name(r.status));
          continue;
        }
        const larder::RowView row = item_rows.row(static_cast<size_t>(i));
        const double z = -2.0 + 8.0 * row.f32(ctr) - 0.01 * row.f64(price) +
                         0.02 * static_cast<double>(user_row.i64(clicks)) + (user_row.boolean(premium) ? 0.5 : 0.0);
        const double p = 1.0 / (1.0 + std::exp(-z));
        std::printf("    %s %-12.*s price=%7.2f ctr=%.3f age %-8s -> p(click)=%.3f\n",
                    item_keys[static_cast<size_t>(i)].c_str(), static_cast<int>(row.string(category).size()),
                    row.string(category).data(), row.f64(price), row.f32(ctr), age_text(r.age_ms(now)).c_str(), p);
      }
      std::printf("    (1 user + %d items looked up in %.1f us)\n", opt.items, lookup_ns / 1000.0);
    }
    return 0;
  } catch (const larder::Error& e) {
    std::fprintf(stderr, "larder-inference-reader: %s\n", e.what());
    return 1;
  }
}
