"""Everything ``facegate run`` checks before it starts, beyond validation (``facegate config check`` runs the same):
cameras, files and folders that must exist or be creatable, the signing key, the pack and its liveness models.

Validation itself (YAML → the typed ``Config``, key paths and lines) is ``facegate.config``; these checks touch the
disk and the environment, which validators never do.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from facegate.config import CameraConfig, Config, duplicate_ids_problem, tz_problem
from facegate.config_file import ConfigIssue, node_line, parse_config, read_text, resolve_paths
from facegate.errors import ConfigError
from facegate.gallery.location import default_gallery_path


def default_state_dir(config: Config) -> Path:
    """Folder for default files (not created here): ``service.state_dir``, else systemd's ``$STATE_DIRECTORY``
    (first entry), else ``$XDG_STATE_HOME/facegate`` (``~/.local/state/facegate``)."""
    if config.service.state_dir:
        return Path(config.service.state_dir)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "facegate"


def creatable(path: Path, folder: bool) -> str | None:
    """Why ``path`` (a file, or a folder when ``folder``) cannot be used or created by this process, else None."""
    if path.exists():
        if folder != path.is_dir():
            return f"{path} exists and is {'not a folder' if folder else 'a folder, not a file'}"
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
    gallery can be created, the signing key is a readable file that others cannot read, TLS and password files
    are readable and the password variable is set.

    Cameras are not opened here (a camera offline at start-up must not stop the others). Returns every issue found.
    """
    from facegate.packs.manifest import load_manifest, pack_calibration
    from facegate.signing import load_signing_key

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
        if cam.file is not None and not Path(cam.file).is_file():
            issues.append(ConfigIssue(f"cameras[{i}].file", None, f"video file {cam.file} does not exist"))
    state = default_state_dir(config)
    for key, path, folder in (("service.state_dir", state, True),
                              ("audit.path", Path(config.audit.path or state / "audit.jsonl"), False),
                              ("gallery.path", Path(config.gallery.path or default_gallery_path()), True)):
        if problem := creatable(path, folder):
            issues.append(ConfigIssue(key, None, problem))
    key_file = Path(config.signing.key_file) if config.signing.key_file else state / "signing.key"
    if config.signing.key_file or key_file.exists():  # a missing default key is created on first run
        try:
            load_signing_key(key_file)
        except ConfigError as exc:
            issues.append(ConfigIssue("signing.key_file", None, str(exc)))
    files = [("mqtt.password_file", config.mqtt.password_file)]
    if config.mqtt.tls is not None:
        files += [(f"mqtt.tls.{k}", getattr(config.mqtt.tls, k)) for k in ("ca", "cert", "key")]
    for key, value in files:
        if value is not None and not (os.path.isfile(value) and os.access(value, os.R_OK)):
            issues.append(ConfigIssue(key, None, f"file {value} does not exist or is not readable"))
    if config.mqtt.password_env and config.mqtt.password_env not in os.environ:
        issues.append(ConfigIssue("mqtt.password_env", None,
                                  f"environment variable {config.mqtt.password_env} is not set"))
    if config.inference.providers:
        import onnxruntime as ort

        known = ort.get_all_providers()
        for i, name in enumerate(config.inference.providers):
            if name not in known:
                issues.append(ConfigIssue(f"inference.providers[{i}]", None, f"unknown execution provider {name!r}; "
                                          f"this ONNX Runtime has {', '.join(ort.get_available_providers())}"))
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
    return issues


def _parse_path(path: str) -> tuple[Any, ...]:
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", path))


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
    config, issues = parse_config(text, str(path))
    if config is None:
        return None, issues
    config = resolve_paths(config, path.parent)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:  # parse_config already accepted it
        root = None
    env = [ConfigIssue(i.path, node_line(root, _parse_path(i.path)), i.message)
           for i in check_environment(config, extra_cameras)]
    return config, env
