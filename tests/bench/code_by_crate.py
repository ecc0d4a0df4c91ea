#!/usr/bin/env python3
"""Bytes of code per crate in a binary built with its symbols (`CARGO_PROFILE_DIST_STRIP=none`),
from `nm -S -C`, like `cargo bloat --crates` but for any binary, cross-built ones included:

    tests/bench/code_by_crate.py BINARY [NM] [ROWS]
    tests/bench/code_by_crate.py target/aarch64-unknown-linux-gnu/dist/edge-agent aarch64-linux-gnu-nm 40

A function belongs to the first crate outside the standard library named in its demangled
path (`core::ptr::drop_in_place<tract_core::X>` counts for tract_core), else to std. Link
without identical code folding when measuring: folded functions share one address, and
each of their names would count it again."""
import re, subprocess, sys, collections
if len(sys.argv) < 2:
    raise SystemExit(__doc__)
nm = sys.argv[2] if len(sys.argv) > 2 else "nm"
out = subprocess.run([nm, "-S", "-C", "--defined-only", sys.argv[1]], capture_output=True, text=True).stdout
# The standard library and the crates it is built from; hashbrown, memchr, miniz_oxide and
# adler2 are dependencies of ours too, and their code counts for std either way.
STD = {"core", "alloc", "std", "proc_macro", "compiler_builtins", "panic_unwind", "std_detect", "hashbrown", "gimli", "addr2line", "miniz_oxide", "adler2", "rustc_demangle", "memchr", "object"}
tot = collections.Counter(); total = 0
for line in out.splitlines():
    p = line.split(None, 3)
    if len(p) < 4 or p[2] not in "tTwW": continue
    size = int(p[1], 16); total += size
    names = re.findall(r"(?:^|[<\s(&*,\[])([A-Za-z_][A-Za-z0-9_]*)::", p[3])
    crate = next((n for n in names if n not in STD and not n[0].isupper()), None)
    if crate is None:
        crate = "std" if names else "[C/asm, unnamed]"
    tot[crate] += size
print(f"{'crate':30} {'KiB':>8} {'share':>6}")
for c, s in tot.most_common(int(sys.argv[3]) if len(sys.argv) > 3 else 40):
    print(f"{c:30} {s/1024:8.0f} {100*s/total:5.1f}%")
print(f"{'total text symbols':30} {total/1024:8.0f}")
