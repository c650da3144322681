// Test-only hooks into the writer, installed from the environment by main()
// (docs/testing.md, "Test-only environment variables"). Never set them in
// production: they kill or stall the writer on purpose.
//
//   LARDER_TEST_CRASH_AT=N      SIGKILL the process at the Nth writer crash
//                               point it reaches (larder::set_crash_hook: a
//                               labelled point inside an update, a position
//                               store included), so a kill lands mid-update
//                               with certainty.
//   LARDER_TEST_PAUSE_AT=N      at the Nth crash point, block the writer
//   LARDER_TEST_PAUSE_UNTIL=F   thread until file F exists (the HTTP thread
//                               keeps answering), then go on.
//
// Threads: install_test_hooks_from_env() runs on the main thread before the
// writer thread starts; the hook runs on the writer thread.
#pragma once

namespace larder::sidecar {

// Installs the hook when LARDER_TEST_CRASH_AT or LARDER_TEST_PAUSE_AT is set.
// Returns false (with a message on stderr) when a value does not parse.
bool install_test_hooks_from_env();

}  // namespace larder::sidecar
