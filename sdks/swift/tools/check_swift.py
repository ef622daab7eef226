#!/usr/bin/env python3
"""Checks the Swift package without a Swift toolchain (none exists on the project's machines).

1. Parses every .swift file (generated and hand-written) with tree-sitter-swift and fails on
   any ERROR or MISSING node: syntax slips, not type errors.
2. Coverage: every method of the generated `Client` (its `ClientProtocol`) is called by the
   hand-written layer (`raw.<name>(`), every code of core/client/errors.toml appears as a case
   of the generated `QpqError` and in the layer's `code` mapping, and the XCTest scenario has a
   test for each of SCENARIO.md's 16 steps.
Prints "swift-checks: N passed, N failed"; exits non-zero on any failure.
Needs `pip install tree-sitter tree-sitter-swift`.
"""
import pathlib
import re
import sys

import tree_sitter
import tree_sitter_swift

PKG = pathlib.Path(__file__).resolve().parent.parent
ROOT = PKG.parent.parent
GENERATED = PKG / "Sources/QpqFFI/QpqFFI.swift"
LAYER = sorted((PKG / "Sources/Qpq").glob("*.swift"))
TESTS = sorted((PKG / "Tests").rglob("*.swift"))

passed, failed = 0, 0


def check(ok, what):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"FAIL {what}")


def bad_nodes(node, out):
    if node.type == "ERROR" or node.is_missing:
        out.append(node)
    for child in node.children:
        bad_nodes(child, out)
    return out


# tree-sitter-swift 0.7 cannot parse a `#if ... #endif` wrapped around an attribute alone
# (valid Swift, emitted by UniFFI around `@_documentation(visibility: private)`): keep the
# attribute, blank the two directive lines (line numbers stay), change nothing else.
ATTR_IN_IF = re.compile(r"^([ \t]*#if [^\n]*)\n([ \t]*@[^\n]*)\n([ \t]*#endif[ \t]*)$", re.M)


# It also misreads the closure `{ () }` (returns the empty tuple; UniFFI's `writeReturn` of a
# callback returning nothing) as a parameter list: it is checked as `{ }` (the same closure).
def without_attribute_conditionals(text):
    text = ATTR_IN_IF.sub(lambda m: "\n" + m.group(2) + "\n", text)
    return text.replace("= { () }", "= { }")


parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_swift.language()))
for path in sorted(PKG.rglob("*.swift")):
    if ".build" in path.parts:
        continue
    source = without_attribute_conditionals(path.read_text()).encode()
    tree = parser.parse(source)
    bad = bad_nodes(tree.root_node, [])
    where = ", ".join(f"line {n.start_point[0] + 1}" for n in bad[:5])
    check(not bad, f"{path.relative_to(PKG)} does not parse: {len(bad)} error nodes ({where})")

generated = GENERATED.read_text()
layer = "\n".join(p.read_text() for p in LAYER)
tests = "\n".join(p.read_text() for p in TESTS)

proto = re.search(r"public protocol ClientProtocol\b.*?\n}\n", generated, re.S)
check(proto is not None, "the generated Swift has a ClientProtocol")
methods = re.findall(r"^\s*func\s+`?(\w+)`?\s*\(", proto.group(0) if proto else "", re.M)
check(len(methods) >= 30, f"ClientProtocol lists {len(methods)} methods")
for m in methods:
    check(re.search(rf"(raw|\$0)\.{m}\(", layer) is not None, f"the Swift layer does not call Client.{m}")
check("Client.open(" in layer, "the Swift layer does not call Client.open")

codes = re.findall(r'^name = "(\w+)"', (ROOT / "core/client/errors.toml").read_text(), re.M)
check(len(codes) >= 15, f"errors.toml has {len(codes)} codes")
error_enum = re.search(r"public\s+enum QpqError\b.*?\n}\n", generated, re.S)
check(error_enum is not None, "the generated Swift has `enum QpqError`")
for code in codes:
    check(re.search(rf"case\s+`?{code}`?\(", error_enum.group(0) if error_enum else "") is not None,
          f"QpqError has no case for {code}")
    check(re.search(rf"case\s+\.{code}\b", layer) is not None, f"the Swift layer's code mapping misses {code}")
    check(re.search(rf"\b{code}\b", tests) is not None, f"the Swift tests never name {code}")

for step in range(1, 17):
    check(re.search(rf"func\s+testStep{step:02d}_", tests) is not None, f"no XCTest for scenario step {step}")

print(f"swift-checks: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
