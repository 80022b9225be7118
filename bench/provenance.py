"""The line every benchmark prints above its table: when, on what, by which command. The README
quotes tables with this line, so each figure can be traced to the run that printed it."""
import datetime
import os
import platform
import shlex
import sys


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        flags = next(l for l in open("/proc/cpuinfo") if l.startswith("flags")).split()
        # Hosts of one name differ here, and libtorch's kernels with them (AVX-512 about doubles
        # some convolutions), so figures from different days compare only as ratios within a run.
        cpu += ", AVX-512" if "avx512f" in flags else ", AVX2" if "avx2" in flags else ""
    except (OSError, StopIteration):
        pass
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 2**20:.0f} GiB"
    except (OSError, StopIteration, ValueError):
        pass
    try:
        import torch

        lib = f", torch {torch.__version__}"
        if torch.cuda.is_available():
            lib += f", {torch.cuda.get_device_name(0)}"
        else:
            lib += ", no GPU"
    except ImportError:
        lib = ""
    return f"{os.cpu_count()} cores ({cpu}){mem}{lib}"


def line(argv=None):
    cmd = " ".join(shlex.quote(a) for a in ([os.path.relpath(sys.executable)] + (argv or sys.argv)))
    return f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {machine()}: `{cmd}`"
