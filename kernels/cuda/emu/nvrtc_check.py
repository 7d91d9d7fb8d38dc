#!/usr/bin/env python3
"""Compile-check CUDA sources with NVRTC (no GPU needed), the way the CUDA backend compiles them.

Usage: python3 kernels/cuda/emu/nvrtc_check.py [--arch sm_90] FILE.cu...
common.cuh is passed as a named header, as the backend does. Exits non-zero with NVRTC's log on
the first failure. Set FLASHNECK_NVRTC to the path of libnvrtc.so.13 if it is not at the default.
"""
import ctypes
import os
import sys

DEFAULT = "/root/.pyenv/versions/3.11.7/lib/python3.11/site-packages/nvidia/cu13/lib/libnvrtc.so.13"
HERE = os.path.dirname(os.path.abspath(__file__))
COMMON = os.path.join(os.path.dirname(HERE), "common.cuh")


def compile_one(lib, path, arch):
    with open(path, "rb") as f:
        src = f.read()
    with open(COMMON, "rb") as f:
        common = f.read()
    prog = ctypes.c_void_p()
    headers = (ctypes.c_char_p * 1)(common)
    names = (ctypes.c_char_p * 1)(b"common.cuh")
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 1, headers, names)
    if rc != 0:
        return rc, "nvrtcCreateProgram failed"
    opts = [f"--gpu-architecture={arch}".encode(), b"-default-device", b"-std=c++17"]
    copts = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), copts)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace")


def main(argv):
    arch = "sm_90"
    if len(argv) > 2 and argv[1] == "--arch":
        arch = argv[2]
        argv = argv[2:]
    path = os.environ.get("FLASHNECK_NVRTC", DEFAULT)
    # NVRTC dlopens its builtins library by name: load it from the same folder first.
    builtins = os.path.join(os.path.dirname(path), "libnvrtc-builtins.so.13.0")
    if os.path.exists(builtins):
        ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(path)
    failed = False
    for src in argv[1:]:
        rc, log = compile_one(lib, src, arch)
        status = "ok" if rc == 0 else f"FAILED (nvrtc {rc})"
        print(f"{src} [{arch}]: {status}")
        if log.strip():
            print(log)
        failed = failed or rc != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
