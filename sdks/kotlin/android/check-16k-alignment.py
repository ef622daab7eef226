#!/usr/bin/env python3
"""Fails when a shared library's LOAD segments are aligned to less than 16 KiB.

Android 15+ devices may use 16 KiB pages; a .so whose PT_LOAD segments are aligned to 4 KiB
does not load there (Google Play requires 16 KiB alignment for new apps). Reads the ELF program
headers directly (ELF32 and ELF64, either endianness), so it runs on any machine, including on
the Linux .so built here. Usage: check-16k-alignment.py LIB.so [LIB.so ...]
"""
import struct
import sys

PT_LOAD = 1
MIN_ALIGN = 16 * 1024


def load_alignments(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path}: not an ELF file")
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        phoff, = struct.unpack_from(end + "Q", data, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x36)
    else:
        phoff, = struct.unpack_from(end + "I", data, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", data, 0x2A)
    aligns = []
    for i in range(phnum):
        off = phoff + i * phentsize
        p_type, = struct.unpack_from(end + "I", data, off)
        if p_type != PT_LOAD:
            continue
        if is64:
            p_align, = struct.unpack_from(end + "Q", data, off + 0x30)
        else:
            p_align, = struct.unpack_from(end + "I", data, off + 0x1C)
        aligns.append(p_align)
    return aligns


def main(paths):
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    bad = 0
    for path in paths:
        aligns = load_alignments(path)
        if not aligns:
            print(f"FAIL {path}: no LOAD segment")
            bad += 1
            continue
        worst = min(aligns)
        verdict = "ok  " if worst >= MIN_ALIGN else "FAIL"
        print(f"{verdict} {path}: {len(aligns)} LOAD segments, smallest alignment {worst:#x}")
        bad += worst < MIN_ALIGN
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
