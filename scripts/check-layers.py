#!/usr/bin/env python3
"""Checks that sycri's modules depend on each other one way.

For each crate (src/, native/src/) every .rs file is a module. A file depends
on another when it names it: in a `use` declaration or in a path in its code
(`crate::a::b`, `super::x`, `self::x`, or `child::x` for a module it
declares). A `mod` declaration is not a dependency, nor is a `pub use` of the
file's own child modules (that is the module's face, not a use of it).
Comments and string literals are skipped.

It fails (exit 1) when the files' dependencies form a cycle, naming the files
and the paths that tie them, or when a file depends on a layer above it:
only `cri/` (and the binary's wiring: server.rs, cli.rs) may use `service`,
and only the wiring may use `cri`.

Usage: scripts/check-layers.py [repository root]
"""

import os
import re
import sys

CRATES = [("src", "lib.rs"), ("native/src", "lib.rs")]
# (crate dir, module prefix that only the listed module prefixes may use)
LAYERS = {
    "src": [
        ("cri", ["cri", "server", "cli"]),
        ("service", ["service", "cri", "server", "cli"]),
    ]
}


def strip(text):
    """The code without comments, string and char literals."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', text[i:]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'r(#*)"', text[i:])
            end = '"' + m.group(1)
            j = text.find(end, i + len(m.group(0)))
            i = n if j < 0 else j + len(end)
            out.append('""')
        elif c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'" and re.match(r"'(\\.|[^\\'])'", text[i:]):
            m = re.match(r"'(\\.|[^\\'])'", text[i:])
            i += len(m.group(0))
            out.append("' '")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def modules(root):
    """module path (tuple) -> file, for every .rs file of the crate at root."""
    mods = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".rs"):
                continue
            p = os.path.join(d, f)
            rel = os.path.relpath(p, root)
            parts = rel[:-3].split(os.sep)
            if parts[0] == "bin" or parts in (["main"],):
                continue
            if parts == ["lib"]:
                parts = []
            elif parts[-1] == "mod":
                parts = parts[:-1]
            mods[tuple(parts)] = p
    return mods


def use_paths(tree, prefix=""):
    """Expands a use tree (`a::{b, c::d as e, *}`) into full paths."""
    tree = tree.strip()
    m = re.match(r"^(.*?)::\s*\{(.*)\}$", tree, re.S)
    if not m and tree.startswith("{") and tree.endswith("}"):
        m = re.match(r"^()\{(.*)\}$", tree, re.S)
    if m:
        base = (prefix + "::" if prefix else "") + m.group(1).strip() if m.group(1).strip() else prefix
        items, depth, cur = [], 0, ""
        for ch in m.group(2):
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                items.append(cur)
                cur = ""
            else:
                cur += ch
        items.append(cur)
        out = []
        for it in items:
            if it.strip():
                out.extend(use_paths(it, base))
        return out
    tree = re.sub(r"\s+as\s+\w+$", "", tree)
    full = (prefix + "::" if prefix else "") + tree
    return [full]


def resolve(path, here, mods):
    """The module (tuple) a path names, or None when it leaves the crate."""
    segs = [s for s in re.split(r"\s*::\s*", path) if s]
    if not segs:
        return None
    if segs[0] == "crate":
        cur, segs = (), segs[1:]
    elif segs[0] in ("super", "self"):
        cur = here
        while segs and segs[0] in ("super", "self"):
            if segs[0] == "super":
                cur = cur[:-1]
            segs = segs[1:]
    elif here + (segs[0],) in mods:
        cur, segs = here + (segs[0],), segs[1:]
    else:
        return None
    for s in segs:
        if s == "*":
            break
        if cur + (s,) in mods:
            cur = cur + (s,)
        else:
            break
    return cur


def dependencies(crate_dir):
    mods = modules(crate_dir)
    edges = {}  # (from file, to file) -> example path
    for mod, path in mods.items():
        code = strip(open(path, encoding="utf-8").read())
        # Inline modules (`mod tests { ... }`): their `super` is this file.
        inline = []
        for m in re.finditer(r"\bmod\s+(\w+)\s*\{", code):
            depth, j = 1, m.end()
            while j < len(code) and depth:
                depth += {"{": 1, "}": -1}.get(code[j], 0)
                j += 1
            inline.append((m.start(), j, m.group(1)))

        def scope(pos):
            s = mod
            for a, b, name in inline:
                if a <= pos < b:
                    s = s + (name,)
            return s

        def add(target_path, pos, pub_use=False):
            here = scope(pos)
            t = resolve(target_path, here, mods)
            if t is None or t not in mods:
                return
            if pub_use and t[: len(mod)] == mod and len(t) > len(mod):
                return  # re-export of a child: the module's face
            a, b = mods[mod], mods[t]
            if a != b:
                edges.setdefault((a, b), target_path)

        used_spans = []
        for m in re.finditer(r"\b(pub(\s*\([^)]*\))?\s+)?use\s+([^;]+);", code):
            used_spans.append((m.start(), m.end()))
            for p in use_paths(m.group(3)):
                add(p, m.start(), pub_use=bool(m.group(1)))
        for m in re.finditer(r"(?<![\w:])((?:crate|super|self|[a-z_][a-z0-9_]*)(?:\s*::\s*\w+)+)", code):
            if any(a <= m.start() < b for a, b in used_spans):
                continue
            add(m.group(1), m.start())
    return mods, edges


def cycles(edges):
    """Strongly connected components with more than one file (Tarjan)."""
    graph = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main():
    top = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..")
    os.chdir(top)
    bad = 0
    total_files = total_edges = 0
    for crate_dir, _ in CRATES:
        mods, edges = dependencies(crate_dir)
        total_files += len(mods)
        total_edges += len(edges)
        for comp in cycles(edges):
            bad += 1
            print(f"check-layers: import cycle in {crate_dir}: {', '.join(comp)}")
            for (a, b), p in sorted(edges.items()):
                if a in comp and b in comp:
                    print(f"  {a} -> {b}: {p}")
        by_file = {f: m for m, f in mods.items()}
        for layer, allowed in LAYERS.get(crate_dir, []):
            for (a, b), p in sorted(edges.items()):
                ma, mb = by_file[a], by_file[b]
                if mb[:1] == (layer,) and ma[:1] not in [(x,) for x in allowed]:
                    bad += 1
                    print(f"check-layers: {a} uses the layer above it, {layer}: {p}")
    if bad:
        print(f"check-layers: {bad} problem(s)")
        return 1
    print(f"check-layers: {total_files} modules, {total_edges} dependencies, no cycle, layers one way")
    return 0


if __name__ == "__main__":
    sys.exit(main())
