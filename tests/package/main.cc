// An inference project that found Larder with find_package(larder).
#include <larder/client.h>
#include <larder/larder.h>

#include <cstdio>
#include <cstring>

int main() {
  // Both APIs link and name the same statuses.
  if (std::strcmp(larder::status_name(larder::Status::kStale), larder_status_name(LARDER_STALE)) != 0) return 1;
  std::printf("find_package(larder) works: %s\n", larder_status_name(LARDER_OK));
  return 0;
}
