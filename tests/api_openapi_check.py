"""Validates real API responses against openapi.yaml (used by tests/api_service.rs).

Usage: api_openapi_check.py OPENAPI_YAML CASES_JSON
CASES_JSON: [{"path", "method", "status", "headers": {lower-case name: value}, "body": <json>}, ...]
The spec itself is validated as OpenAPI 3.1 first. Exit 0 when every case matches, 1 otherwise.
"""
import json
import sys

import yaml
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

FALLBACK = {404: "NotFound", 405: "MethodNotAllowed"}


def pointer(*parts):
    return "#/" + "/".join(str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def main(spec_path, cases_path):
    with open(spec_path) as f:
        spec = yaml.safe_load(f)
    validate(spec)
    registry = Registry().with_resource("urn:openapi", Resource.from_contents(spec, default_specification=DRAFT202012))

    def resolve(ptr):
        node = spec
        for part in ptr[2:].split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        if "$ref" in node:
            return resolve(node["$ref"])
        return node, ptr

    def check(schema_ptr, value):
        validator = Draft202012Validator({"$ref": "urn:openapi" + schema_ptr}, registry=registry)
        return [e.message for e in validator.iter_errors(value)]

    with open(cases_path) as f:
        cases = json.load(f)
    failures = []
    for i, case in enumerate(cases):
        status, where = case["status"], f"case {i} ({case['method']} {case['path']} -> {case['status']})"
        op = spec["paths"].get(case["path"], {}).get(case["method"].lower())
        if op is not None and str(status) in op["responses"]:
            response, ptr = resolve(pointer("paths", case["path"], case["method"].lower(), "responses", str(status)))
        elif status in FALLBACK:
            response, ptr = resolve(pointer("components", "responses", FALLBACK[status]))
        else:
            failures.append(f"{where}: status not documented")
            continue
        content = response.get("content", {})
        if "application/json" not in content:
            failures.append(f"{where}: no application/json content documented")
            continue
        if not case["headers"].get("content-type", "").startswith("application/json"):
            failures.append(f"{where}: content-type is {case['headers'].get('content-type')!r}")
        for msg in check(ptr + "/content/application~1json/schema", case["body"]):
            failures.append(f"{where}: body: {msg}")
        for name, header in response.get("headers", {}).items():
            value = case["headers"].get(name.lower())
            if value is None:
                if header.get("required"):
                    failures.append(f"{where}: required header {name} missing")
                continue
            for msg in check(ptr + "/headers/" + name + "/schema", value):
                failures.append(f"{where}: header {name}: {msg}")
    for line in failures:
        print(line)
    bad = len({f.split(":")[0] for f in failures})
    print(f"openapi check: {len(cases) - bad} of {len(cases)} responses conform")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
