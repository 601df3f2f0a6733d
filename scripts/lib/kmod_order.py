#!/usr/bin/env python3
"""scripts/lib/kmod_order.py: the order in which to insmod a directory of Linux kernel modules.

    python3 scripts/lib/kmod_order.py DIR     prints DIR's *.ko names, one a line, in load order

Debian's kernel package ships no modules.dep (depmod writes it at install time), and the
initramfs has no modprobe configuration, so the order is worked out here from what each module
says about itself in its .modinfo ELF section (the strings modinfo(8) shows):

    depends=a,b          hard dependencies: a and b must be loaded first
    softdep=pre: x y     x and y (module names or aliases) are wanted first: ext4 and jbd2 ask
                         for "crypto-crc32c", which crc32c_generic provides as an alias
    alias=...            the names a module answers to besides its own

A module comes after everything it depends on; ties go by name, so the order is stable. A hard
dependency that is not in DIR is an error (exit 1, naming both modules): the module could not
load. A soft one that nothing in DIR provides is reported on stderr, since the kernel may have it
built in. mkinitramfs writes this order into the initramfs (/lib/modules/load-order), and
scripts/setup checks with it that the modules it extracted are complete.
"""
import os
import struct
import sys


def modinfo(path):
    """The key=value strings of the .modinfo section of a 64-bit little-endian ELF module."""
    with open(path, "rb") as f:
        elf = f.read()
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError(f"{path}: not a 64-bit little-endian ELF file")
    shoff, = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def section(i):
        # Elf64_Shdr: name, type, flags, addr, offset, size, ...
        name, _, _, _, off, size = struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = elf.index(b"\0", stroff + name)
        if elf[stroff + name:end] == b".modinfo":
            info = {}
            for entry in elf[off:off + size].split(b"\0"):
                if b"=" in entry:
                    k, v = entry.decode("utf-8", "replace").split("=", 1)
                    info.setdefault(k, []).append(v)
            return info
    raise ValueError(f"{path}: no .modinfo section")


def norm(name):
    return name.replace("-", "_")


def load_order(directory):
    """(order, warnings) for the *.ko files of directory; raises ValueError on a missing hard
    dependency or a cycle."""
    kos = sorted(f for f in os.listdir(directory) if f.endswith(".ko"))
    names = {norm(ko[:-3]): ko for ko in kos}
    infos = {n: modinfo(os.path.join(directory, ko)) for n, ko in names.items()}
    provides = {}
    for n, info in infos.items():
        for alias in info.get("alias", []):
            provides.setdefault(norm(alias), n)
    deps, warnings = {}, []
    for n, info in infos.items():
        need = set()
        for d in ",".join(info.get("depends", [])).split(","):
            if not d:
                continue
            if norm(d) not in names:
                raise ValueError(f"{names[n]} depends on {d}, which is not in {directory}")
            need.add(norm(d))
        for soft in info.get("softdep", []):
            words = soft.split()
            pre = words[1:words.index("post:")] if "post:" in words else words[1:]
            if not words or words[0] != "pre:":
                continue
            for w in pre:
                p = norm(w)
                if p in names:
                    need.add(p)
                elif p in provides:
                    need.add(provides[p])
                else:
                    warnings.append(f"{names[n]} wants {w} first (softdep), which no module in "
                                    f"{directory} provides (fine if the kernel has it built in)")
        need.discard(n)
        deps[n] = need
    order, done = [], set()
    while len(order) < len(names):
        ready = sorted(n for n in names if n not in done and deps[n] <= done)
        if not ready:
            stuck = sorted(names[n] for n in names if n not in done)
            raise ValueError(f"dependency cycle among {', '.join(stuck)}")
        order.append(names[ready[0]])
        done.add(ready[0])
    return order, warnings


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: kmod_order.py DIR")
    try:
        order, warnings = load_order(sys.argv[1])
    except (OSError, ValueError) as e:
        sys.exit(f"kmod_order: {e}")
    for w in warnings:
        print(f"kmod_order: {w}", file=sys.stderr)
    print("\n".join(order))


if __name__ == "__main__":
    main()
