// A strict reader of the Prometheus text format (0.0.4) for the metrics
// tests: every sample must belong to a family announced by "# HELP" and
// "# TYPE" lines, names and label sets must be well formed, and values must
// parse. Test main thread only.
#pragma once

#include <cctype>
#include <cstdlib>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>

namespace larder::test {

struct ParsedMetrics {
  // "name" or "name{labels}" exactly as rendered -> value.
  std::map<std::string, double> samples;
  std::map<std::string, std::string> types;  // family -> counter | gauge | histogram
  std::string error;                         // "" when the text is valid

  bool has(const std::string& key) const { return samples.count(key) != 0; }
  // The value, or NaN when absent.
  double at(const std::string& key) const {
    auto it = samples.find(key);
    return it == samples.end() ? std::numeric_limits<double>::quiet_NaN() : it->second;
  }
};

inline bool valid_metric_name(const std::string& n) {
  if (n.empty() || !(std::isalpha(static_cast<unsigned char>(n[0])) || n[0] == '_' || n[0] == ':')) return false;
  for (char c : n) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == ':')) return false;
  }
  return true;
}

// The family a sample belongs to: histogram samples drop _bucket/_sum/_count.
inline std::string family_of(const std::string& name, const std::map<std::string, std::string>& types) {
  if (types.count(name)) return name;
  for (const char* suffix : {"_bucket", "_sum", "_count"}) {
    const std::string s(suffix);
    if (name.size() > s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0) {
      const std::string base = name.substr(0, name.size() - s.size());
      auto it = types.find(base);
      if (it != types.end() && it->second == "histogram") return base;
    }
  }
  return "";
}

inline ParsedMetrics parse_prometheus(const std::string& text) {
  ParsedMetrics out;
  std::set<std::string> helped;
  std::istringstream in(text);
  std::string line;
  int lineno = 0;
  auto fail = [&](const std::string& why) {
    if (out.error.empty()) out.error = "line " + std::to_string(lineno) + ": " + why + ": " + line;
  };
  while (std::getline(in, line)) {
    ++lineno;
    if (line.empty()) continue;
    if (line.rfind("# HELP ", 0) == 0) {
      const std::string rest = line.substr(7);
      const std::string name = rest.substr(0, rest.find(' '));
      if (!valid_metric_name(name)) fail("bad HELP name");
      helped.insert(name);
      continue;
    }
    if (line.rfind("# TYPE ", 0) == 0) {
      std::istringstream ls(line.substr(7));
      std::string name, type;
      ls >> name >> type;
      if (!helped.count(name)) fail("TYPE without HELP");
      if (type != "counter" && type != "gauge" && type != "histogram") fail("unknown type");
      if (out.types.count(name)) fail("family announced twice");
      out.types[name] = type;
      continue;
    }
    if (line[0] == '#') continue;
    size_t name_end = line.find_first_of("{ ");
    if (name_end == std::string::npos) {
      fail("no value");
      continue;
    }
    const std::string name = line.substr(0, name_end);
    if (!valid_metric_name(name)) fail("bad name");
    size_t value_at = name_end;
    if (line[name_end] == '{') {
      // Labels: name="value" pairs; values may contain escaped quotes.
      size_t i = name_end + 1;
      bool in_quotes = false;
      for (; i < line.size(); ++i) {
        if (in_quotes && line[i] == '\\') {
          ++i;
        } else if (line[i] == '"') {
          in_quotes = !in_quotes;
        } else if (!in_quotes && line[i] == '}') {
          break;
        }
      }
      if (i >= line.size()) {
        fail("unterminated labels");
        continue;
      }
      value_at = i + 1;
    }
    if (value_at >= line.size() || line[value_at] != ' ') {
      fail("no space before the value");
      continue;
    }
    const std::string key = line.substr(0, value_at);
    const std::string value = line.substr(value_at + 1);
    double v = 0;
    if (value == "+Inf") {
      v = std::numeric_limits<double>::infinity();
    } else if (value == "-Inf") {
      v = -std::numeric_limits<double>::infinity();
    } else if (value == "NaN") {
      v = std::numeric_limits<double>::quiet_NaN();
    } else {
      char* end = nullptr;
      v = std::strtod(value.c_str(), &end);
      if (value.empty() || end != value.c_str() + value.size()) fail("bad value");
    }
    if (family_of(name, out.types).empty()) fail("sample before its # TYPE line");
    if (out.samples.count(key)) fail("duplicate sample");
    out.samples[key] = v;
  }
  return out;
}

}  // namespace larder::test
