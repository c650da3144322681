"""Copies liblarder.so into the package when it is built, so an installed
`larder` finds its library without LARDER_LIBRARY. Looked up in order:
$LARDER_LIBRARY, $LARDER_BUILD_DIR/client_lib, <repo>/build/client_lib.
Without one the package installs alone and finds the library at run time
(LARDER_LIBRARY, or the system loader after `cmake --install`)."""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))


def find_library():
    candidates = [os.environ.get("LARDER_LIBRARY")]
    if os.environ.get("LARDER_BUILD_DIR"):
        candidates.append(os.path.join(os.environ["LARDER_BUILD_DIR"], "client_lib", "liblarder.so"))
    candidates.append(os.path.join(REPO, "build", "client_lib", "liblarder.so"))
    for c in candidates:
        if c and os.path.exists(c):
            return c
    return None


class BuildWithLibrary(build_py):
    def run(self):
        super().run()
        lib = find_library()
        target = os.path.join(self.build_lib, "larder", "liblarder.so")
        if lib:
            shutil.copyfile(lib, target)  # follows the .so -> .so.0 -> .so.0.1.0 links
            print("larder: bundled %s" % lib)
        else:
            print("larder: liblarder.so not found (build target larder_client_shared); "
                  "the package will look for it at run time")


setup(cmdclass={"build_py": BuildWithLibrary})
