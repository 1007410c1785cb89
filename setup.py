"""Builds the native extension tpo_fast._C from csrc/ with ninja; metadata is in pyproject.toml.

The extension only exchanges numpy buffers, so it needs pybind11 and a C++17 compiler, never
torch headers: it builds in seconds. tpo_fast.packing falls back to its numpy reference (with a
warning) when the extension is missing.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

CXXFLAGS = ["-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", "-Wall", "-Wextra"]


def _ninja_path(path) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


class NinjaBuildExt(build_ext):
    """Writes one build.ninja per extension and runs ninja (parallel, incremental, header deps)."""

    def build_extension(self, ext: Extension) -> None:
        import pybind11

        ninja = shutil.which("ninja")
        if ninja is None:
            from ninja import BIN_DIR  # the `ninja` build requirement ships the binary

            ninja = os.path.join(BIN_DIR, "ninja")
        cxx = os.environ.get("CXX", "c++")
        includes = [pybind11.get_include(), sysconfig.get_paths()["include"]]
        ldflags = ["-undefined", "dynamic_lookup"] if sys.platform == "darwin" else []
        build_dir = Path(self.build_temp).resolve() / ext.name
        build_dir.mkdir(parents=True, exist_ok=True)
        target = Path(self.get_ext_fullpath(ext.name)).resolve()
        target.parent.mkdir(parents=True, exist_ok=True)

        lines = [
            f"cxx = {cxx}",
            "cflags = " + " ".join(CXXFLAGS + [f"-I{_ninja_path(i)}" for i in includes]),
            "rule compile",
            "  command = $cxx -MMD -MF $out.d $cflags -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = CXX $in",
            "rule link",
            "  command = $cxx -shared $in -o $out " + " ".join(ldflags),
            "  description = LINK $out",
        ]
        objects = []
        for source in ext.sources:
            obj = Path(source).stem + ".o"
            lines.append(f"build {obj}: compile {_ninja_path(Path(source).resolve())}")
            objects.append(obj)
        lines.append(f"build {_ninja_path(target)}: link {' '.join(objects)}")
        (build_dir / "build.ninja").write_text("\n".join(lines) + "\n")
        subprocess.run([ninja, "-C", str(build_dir)], check=True)


setup(
    # kernels/ is a self-contained package (torch + triton only) that installs as tpo_fast.kernels.
    packages=find_packages(include=["tpo_fast", "tpo_fast.*"]) + ["tpo_fast.kernels"],
    package_dir={"tpo_fast.kernels": "kernels"},
    ext_modules=[Extension("tpo_fast._C", sources=["csrc/packing.cpp", "csrc/bindings.cpp"])],
    cmdclass={"build_ext": NinjaBuildExt},
)
