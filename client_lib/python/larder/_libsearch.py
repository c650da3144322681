"""Finds one of Larder's shared libraries for ctypes (_native.py for
liblarder.so, _offline_native.py for liblarder_offline.so).

Search order:
  1. $<env var> (a path to the .so);
  2. the package directory (a copy bundled by ``pip install``);
  3. the build tree: $LARDER_BUILD_DIR/<subdir>, then <repo>/build/<subdir>
     when the package is imported from a checkout;
  4. the system loader (``<name>`` / ``<name>.0`` on the library path, e.g.
     after ``cmake --install``).
"""

import ctypes
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
_REPO = os.path.dirname(os.path.dirname(os.path.dirname(_HERE)))  # client_lib/python/larder -> repo


def candidates(name, env_var, build_subdir):
    """Paths tried in order; the last entries are names for the system loader."""
    paths = []
    env = os.environ.get(env_var)
    if env:
        paths.append(env)
    paths.append(os.path.join(_HERE, name))
    build = os.environ.get("LARDER_BUILD_DIR")
    if build:
        paths.append(os.path.join(build, build_subdir, name))
    paths.append(os.path.join(_REPO, "build", build_subdir, name))
    return paths, [name, name + ".0"]


def find(name, env_var, build_subdir, target):
    """The path (or loader name) of library `name`. A set but missing $env_var
    is an error rather than a fall-through, so a typo does not silently load
    another copy. `target` is the CMake target named in the not-found error."""
    paths, names = candidates(name, env_var, build_subdir)
    env = os.environ.get(env_var)
    if env and not os.path.exists(env):
        raise OSError("%s=%s does not exist" % (env_var, env))
    for p in paths:
        if os.path.exists(p):
            return p
    for loader_name in names:
        try:
            ctypes.CDLL(loader_name)
            return loader_name
        except OSError:
            pass
    raise OSError("%s not found; tried %s and the system loader. Build it with "
                  "`cmake --build build --target %s` or set %s" % (name, ", ".join(paths), target, env_var))
