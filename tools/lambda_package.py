#!/usr/bin/env python3
"""Lays out (and optionally zips) a Lambda function package: bootstrap + models/.

    lambda_package.py BINARY DIR [--debug-file FILE] [--zip ZIP] MODEL_FILE...

- DIR/bootstrap: BINARY with every symbol and debug section stripped (`zig objcopy --strip-all`,
  zig from the `ziglang` package of the Python running this script, i.e. .venv). With
  --debug-file, the removed sections go to FILE and the binary gets a .gnu_debuglink to it
  (for symbolised backtraces: `addr2line -e FILE`, or gdb with FILE beside the binary).
- DIR/models/: the MODEL_FILEs (the .safetensors weights and calibration.json).
- --zip ZIP: the same layout as a reproducible zip (fixed timestamps, sorted entries, bootstrap
  mode 0755, deflate level 9), then its contents and size are printed.

`make lambda-build` uses it for the deployed zip, and tests/lambda_cold_start.rs for the host
binary, so cold start is measured on the layout Lambda unpacks into /var/task.
"""

import argparse
import os
import shutil
import stat
import subprocess
import sys
import zipfile

ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def strip(binary, out, debug_file):
    cmd = [sys.executable, "-m", "ziglang", "objcopy", "--strip-all"]
    if debug_file:
        cmd += ["--extract-to", debug_file]
    subprocess.run(cmd + [binary, out], check=True)
    os.chmod(out, 0o755)


def write_zip(package_dir, zip_path):
    entries = ["bootstrap"] + sorted(
        "models/" + name for name in os.listdir(os.path.join(package_dir, "models"))
    )
    tmp = zip_path + ".tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        for name in entries:
            info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if name == "bootstrap" else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16
            with open(os.path.join(package_dir, name), "rb") as f:
                z.writestr(info, f.read(), compresslevel=9)
    os.replace(tmp, zip_path)
    return entries


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("binary")
    p.add_argument("dir")
    p.add_argument("models", nargs="+")
    p.add_argument("--debug-file")
    p.add_argument("--zip")
    a = p.parse_args()

    if os.path.exists(a.dir):
        shutil.rmtree(a.dir)
    os.makedirs(os.path.join(a.dir, "models"))
    strip(a.binary, os.path.join(a.dir, "bootstrap"), a.debug_file)
    for model in a.models:
        shutil.copyfile(model, os.path.join(a.dir, "models", os.path.basename(model)))
    if a.zip:
        write_zip(a.dir, a.zip)
        with zipfile.ZipFile(a.zip) as z:
            print(f"{'size':>10} {'zipped':>10}  name")
            for i in z.infolist():
                print(f"{i.file_size:>10} {i.compress_size:>10}  {i.filename}")
        size = os.path.getsize(a.zip)
        print(f"{a.zip}: {size} bytes ({size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
