// Text as the body of a JSON string, for what Larder prints as JSON: the
// sidecar's JSON log lines, larderctl's --json output, larder-backfill's JSON
// output. Header-only, so a program that includes it (larder-backfill, through
// the sidecar's include directory) links nothing more for it.
// Any thread: a pure function of its arguments.
#pragma once

#include <string_view>

namespace larder::sidecar {

// Appends s to out escaped for a JSON string, without the quotes: '"', '\\'
// and \n \r \t as two-character escapes, other control characters as \u00XX
// (lower-case hex), every other byte as is (UTF-8 passes through unchecked).
// Out: anything with push_back(char) and append(const char*, const char*),
// e.g. std::string or fmt's memory buffer.
template <typename Out>
void append_json_escaped(Out& out, std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  auto put = [&out](std::string_view text) { out.append(text.data(), text.data() + text.size()); };
  for (unsigned char c : s) {
    switch (c) {
      case '"': put("\\\""); break;
      case '\\': put("\\\\"); break;
      case '\n': put("\\n"); break;
      case '\r': put("\\r"); break;
      case '\t': put("\\t"); break;
      default:
        if (c < 0x20) {
          const char esc[] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 0xf]};
          out.append(esc, esc + sizeof esc);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
}

}  // namespace larder::sidecar
