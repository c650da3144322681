// Runs a libFuzzer target's body over files, without libFuzzer: the inputs
// of the kept corpus directories (seeds and regression inputs) become a
// plain test that any compiler builds (ctest fuzz.read_segment_replay).
//
//   larder_fuzz_read_segment_replay DIR_OR_FILE...
//
// Each argument is a file or a directory of files (not recursive). Exits 0
// after running every input; a crash or failed check aborts on the input,
// whose name was printed first. A directory without inputs is an error: the
// test would otherwise pass without testing anything.
#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::string> inputs_of(const std::string& arg) {
  struct stat st;
  if (::stat(arg.c_str(), &st) != 0) return {};
  if (!S_ISDIR(st.st_mode)) return {arg};
  std::vector<std::string> files;
  if (DIR* d = ::opendir(arg.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string path = arg + "/" + e->d_name;
      if (e->d_name[0] != '.' && ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode)) files.push_back(path);
    }
    ::closedir(d);
  }
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s DIR_OR_FILE...\n", argv[0]);
    return 2;
  }
  size_t total = 0;
  for (int a = 1; a < argc; ++a) {
    const std::vector<std::string> files = inputs_of(argv[a]);
    if (files.empty()) {
      std::fprintf(stderr, "%s: no inputs in %s\n", argv[0], argv[a]);
      return 1;
    }
    for (const std::string& f : files) {
      std::ifstream in(f, std::ios::binary);
      const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (!in.eof() && in.fail()) {
        std::fprintf(stderr, "%s: cannot read %s\n", argv[0], f.c_str());
        return 1;
      }
      std::fprintf(stderr, "replay %s (%zu bytes)\n", f.c_str(), bytes.size());
      LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
      ++total;
    }
  }
  std::printf("replayed %zu inputs\n", total);
  return 0;
}
