"""Everything ``facegate run`` checks before it starts, beyond validation (``facegate config check`` runs the same):
cameras, files and folders that must exist or be creatable, the signing key, the pack and its liveness models.

Validation itself (YAML → the typed ``Config``, key paths and lines) is ``facegate.config``; these checks touch the
disk and the environment, which validators never do.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from facegate.config import CameraConfig, Config
from facegate.config_file import ConfigIssue, key_loc, node_line, parse_config_tree, read_text, resolve_paths
from facegate.config_rules import duplicate_ids_problem, passage_keys_problem, tz_problem
from facegate.errors import ConfigError
from facegate.gallery.location import default_gallery_path
from facegate.limits import thread_count_problem


def default_state_dir(config: Config) -> Path:
    """Folder for default files (not created here): ``service.state_dir``, else systemd's ``$STATE_DIRECTORY``
    (first entry), else ``$XDG_STATE_HOME/facegate`` (``~/.local/state/facegate``)."""
    if config.service.state_dir:
        return Path(config.service.state_dir)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "facegate"


def creatable(path: Path, folder: bool) -> str | None:
    """Why ``path`` (a file, or a folder when ``folder``) cannot be used or created by this process, else None.
    A file must be a regular file: an audit log on ``/dev/null`` or a FIFO would record nothing durable."""
    try:
        return _creatable(path, folder)
    except OSError as exc:  # a name too long, a loop of symbolic links, a folder we may not search
        return f"{path}: cannot use this path ({exc.strerror or exc})"


def _creatable(path: Path, folder: bool) -> str | None:
    if path.exists():
        if folder != path.is_dir():
            return f"{path} exists and is {'not a folder' if folder else 'a folder, not a file'}"
        if not folder and not path.is_file():
            return f"{path} is a device, FIFO or socket, not a regular file"
        if not os.access(path, os.W_OK | (os.X_OK if folder else 0)):
            return f"{path} is not writable by this user"
        return None
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"cannot create {path}: parent is not a folder ({parent} is a file)"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"cannot create {path}: {parent} is not writable by this user"
            return None
    return None


def check_environment(config: Config, extra_cameras: list[CameraConfig] | None = None) -> list[ConfigIssue]:
    """Every check ``facegate run`` makes before it starts (run on a validated, resolved config; ``extra_cameras``
    are the command line's ``--camera`` ones): at least one camera and unique ids, video files exist, time zones
    exist, the pack is known (with a liveness model when ``liveness.enabled``, an intact calibration file, and one at
    all when ``decision.false_accept_rate`` is set — whether the goal can be met depends on the gallery's size, which
    ``facegate run`` checks when it opens the gallery), the audit log, state folder and
    gallery can be created (the audit log a regular file), ``inference.threads`` fits this machine's CPUs, the
    signing key is a readable file that others cannot read, TLS and password files
    are readable and the password variable is set.

    Cameras are not opened here (a camera offline at start-up must not stop the others). Returns every issue found.
    """
    from facegate.packs.manifest import load_manifest, pack_calibration

    issues: list[ConfigIssue] = []
    cameras = list(config.cameras) + list(extra_cameras or [])
    if not cameras:
        issues.append(ConfigIssue("cameras", None, "no cameras: add cameras: to the config or give --camera "
                                                   "URL_OR_FILE"))
    if problem := duplicate_ids_problem("cameras", [c.id for c in cameras]):  # --camera ids join the config's
        issues.append(ConfigIssue("cameras", None, problem))
    for i, door in enumerate(config.doors):
        if door.schedule is not None and (problem := tz_problem(door.schedule.timezone)):
            issues.append(ConfigIssue(f"doors[{i}].schedule.timezone", None, problem))
    for i, cam in enumerate(config.cameras):
        if cam.file is not None and not os.path.isfile(cam.file):  # False for a name too long, too
            issues.append(ConfigIssue(f"cameras[{i}].file", None, f"video file {cam.file} does not exist (or is not "
                                      "a regular file)"))
    state = default_state_dir(config)
    for key, path, folder in (("service.state_dir", state, True),
                              ("audit.path", Path(config.audit.path or state / "audit.jsonl"), False),
                              ("gallery.path", Path(config.gallery.path or default_gallery_path()), True)):
        if problem := creatable(path, folder):
            issues.append(ConfigIssue(key, None, problem))
    issues += _signing_issues(config, state)
    issues += _passage_key_issues(config, state)
    files = [("mqtt.password_file", config.mqtt.password_file)]
    if config.mqtt.tls is not None:
        files += [(f"mqtt.tls.{k}", getattr(config.mqtt.tls, k)) for k in ("ca", "cert", "key")]
    for key, value in files:
        if value is not None and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            issues.append(ConfigIssue(key, None, f"file {value} does not exist or is not readable"))
    if config.mqtt.password_env and config.mqtt.password_env not in os.environ:
        issues.append(ConfigIssue("mqtt.password_env", None,
                                  f"environment variable {config.mqtt.password_env} is not set"))
    if config.inference.threads is not None and (problem := thread_count_problem(config.inference.threads)):
        issues.append(ConfigIssue("inference.threads", None, problem))
    if config.inference.providers:
        import onnxruntime as ort

        available = ort.get_available_providers()  # what sessions of this build accept (not every known name)
        for i, name in enumerate(config.inference.providers):
            if name not in available:
                what = (f"execution provider {name!r} is not available in this ONNX Runtime build"
                        if name in ort.get_all_providers() else f"unknown execution provider {name!r}")
                issues.append(ConfigIssue(f"inference.providers[{i}]", None,
                                          f"{what}; this ONNX Runtime has {', '.join(available)}"))
    try:
        manifest = load_manifest(config.pack)
    except ConfigError as exc:
        issues.append(ConfigIssue("pack", None, str(exc)))
    else:
        if config.liveness.enabled and manifest.liveness is None:
            issues.append(ConfigIssue("liveness.enabled", None, f"pack {manifest.name!r} has no liveness model; "
                                      "choose a pack with one or set liveness.enabled: false"))
        try:  # the daemon reads the calibration at start (the rate of its threshold; a false-accept goal needs it)
            calibration = pack_calibration(manifest)
        except ConfigError as exc:
            issues.append(ConfigIssue("pack", None, str(exc)))
        else:
            if calibration is None and config.decision.false_accept_rate is not None:
                issues.append(ConfigIssue("decision.false_accept_rate", None, f"pack {manifest.name!r} has no "
                                          "calibration; set decision.threshold instead, or use a calibrated pack "
                                          "(default, dlib, retinaface-mobilefacenet)"))
            issues += _gallery_issues(config, manifest, calibration)
    return issues


def _gallery_issues(config: Config, manifest, calibration) -> list[ConfigIssue]:
    """What ``facegate run`` refuses once it opens an existing gallery: templates of another pack, or a
    ``decision.false_accept_rate`` that its number of templates cannot meet (``Scorer.resolve``). The database is
    only read, in SQLite's read-only mode (``gallery/peek.py``)."""
    from facegate.errors import FalseAcceptGoalError, GalleryError
    from facegate.gallery.binding import binding_problem, manifest_binding
    from facegate.gallery.peek import peek
    from facegate.scoring import Scorer

    folder = Path(config.gallery.path or default_gallery_path())
    try:
        seen = peek(folder)  # read-only: config check creates, migrates, chmods and locks nothing
    except GalleryError as exc:
        return [ConfigIssue("gallery.path", None, str(exc))]
    if seen is None:
        return []
    bound, templates = seen
    if problem := binding_problem(folder, bound, manifest_binding(manifest)):
        return [ConfigIssue("pack", None, problem)]
    d = config.decision
    if d.false_accept_rate is not None and calibration is not None:
        try:
            Scorer.resolve(manifest, d.threshold, false_accept_rate=d.false_accept_rate, calibration=calibration,
                           templates=templates, vote=(d.k, d.n))
        except FalseAcceptGoalError as exc:
            return [ConfigIssue("decision.false_accept_rate", None, str(exc))]
    return []


def config_warnings(config: Config) -> list[str]:
    """What runs but a security officer must know (``facegate config check`` prints them; exit status unchanged):
    no doors (every enrolled identity admitted at any time) and no presentation-attack detection."""
    warnings = []
    if not config.doors:
        warnings.append("doors: none configured: every enrolled identity is admitted at any time through the implicit "
                        "door 'default'; add doors: with allowed_groups (and a schedule) to restrict who passes")
    if not config.liveness.enabled:
        warnings.append(f"liveness.enabled: false (pack {config.pack!r}): a photo or screen of an enrolled face held "
                        "up to the camera can be granted; use a pack with a liveness model and liveness.enabled: true "
                        "(README: Liveness (PAD))")
    return warnings


def _signing_issues(config: Config, state: Path) -> list[ConfigIssue]:
    """The signing key must load as its algorithm needs (a missing default key is created on first run)."""
    from facegate.signing import load_private_key, load_signing_key

    s = config.signing
    default = state / ("event-signing.key" if s.algorithm == "ed25519" else "signing.key")
    key_file = Path(s.key_file) if s.key_file else default
    if not (s.key_file or os.path.lexists(key_file)):
        return []
    try:
        load_private_key(key_file) if s.algorithm == "ed25519" else load_signing_key(key_file)
    except ConfigError as exc:
        hint = " (an HMAC secret? set signing.algorithm: hmac-sha256)" if s.algorithm == "ed25519" else ""
        return [ConfigIssue("signing.key_file", None, f"{exc}{hint}")]
    return []


def _passage_key_issues(config: Config, state: Path) -> list[ConfigIssue]:
    """Each door's passage_public_key must load as an Ed25519 public key, be none of the daemon's event key and
    not be shared with another door (``config_rules.passage_keys_problem``), as the daemon checks at start."""
    from facegate.signing import key_id, load_private_key, load_public_key

    issues, kids = [], {}
    for i, d in enumerate(config.doors):
        if d.passage_public_key is not None:
            try:
                kids[d.id] = key_id(load_public_key(d.passage_public_key))
            except ConfigError as exc:
                issues.append(ConfigIssue(f"doors[{i}].passage_public_key", None, str(exc)))
    event_kid = None
    key_file = Path(config.signing.key_file) if config.signing.key_file else state / "event-signing.key"
    if kids and config.signing.algorithm == "ed25519" and os.path.isfile(key_file):
        with contextlib.suppress(ConfigError):  # an unloadable key is _signing_issues' to report
            event_kid = key_id(load_private_key(key_file).public_key())
    if problem := passage_keys_problem(kids, event_kid):
        issues.append(ConfigIssue("doors", None, problem))
    return issues


def check_file(path: str | Path | None,
               extra_cameras: list[CameraConfig] | None = None) -> tuple[Config | None, list[ConfigIssue]]:
    """Everything ``facegate run --config path`` would refuse (``facegate config check``): validation issues
    (plus the cross-field checks that can run on raw values), then, if it validates, ``check_environment``; each
    with its key path and YAML line. ``path`` None checks the built-in defaults. Returns (resolved config or None,
    issues)."""
    if path is None:
        config = Config()
        return config, check_environment(config, extra_cameras)
    path = Path(path)
    text, issue = read_text(path)
    if issue is not None:
        return None, [issue]
    config, issues, root = parse_config_tree(text, str(path))
    if config is None:
        # the sections without a problem are still checked against the machine (files, keys, zones, pack), so one
        # pass lists every problem, not only the first kind (new-user trial: a bad decision section hid a missing
        # video and a public key given as signing.key_file)
        partial = _without_sections(text, issues)
        if partial is not None:
            removed = {_section(i.path) for i in issues}
            issues = issues + [ConfigIssue(i.path, node_line(root, key_loc(i.path)), i.message)
                               for i in check_environment(resolve_paths(partial, path.parent), extra_cameras)
                               if _section(i.path) not in removed]
        return None, issues
    config = resolve_paths(config, path.parent)
    env = [ConfigIssue(i.path, node_line(root, key_loc(i.path)), i.message)
           for i in check_environment(config, extra_cameras)]
    return config, env


def _section(key_path: str) -> str:
    """The top-level section of an issue's key path ("cameras[0].file" → "cameras")."""
    return key_path.split(".")[0].split("[")[0]


def _without_sections(text: str, issues: list[ConfigIssue]) -> Config | None:
    """The config with every top-level section that has an issue left at its defaults, or None when that does not
    validate either (or the text is not a mapping)."""
    import yaml
    from pydantic import ValidationError

    sections = {_section(i.path) for i in issues}
    if "" in sections:
        return None
    try:
        raw = yaml.safe_load(text)
        if not isinstance(raw, dict):
            return None
        return Config.model_validate({k: v for k, v in raw.items() if k not in sections})
    except (yaml.YAMLError, ValidationError, RecursionError, TypeError, ValueError):
        return None
