"""Config files: YAML text → a validated, path-resolved ``facegate.config.Config``, every problem with its key path
and YAML line.

``parse_config`` never raises for bad input: it returns every issue found. YAML that would mislead or exhaust
validation is refused before pydantic sees it: duplicate keys (PyYAML keeps the last silently), alias bombs, nesting
too deep. When field errors stop pydantic's cross-field validators, the same rule functions of ``facegate.config``
(``k_le_n_problem``, ``duplicate_ids_problem``) run on the raw values so one pass reports them all. Relative paths
are resolved against the folder of the file (``resolve_paths``). Pattern taken from frigate's ``config/base.py``
and ``__main__.py`` (see shared/notes/style.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from facegate.config import Config, DecisionConfig
from facegate.config_rules import duplicate_ids_problem, k_le_n_problem, tz_problem
from facegate.errors import ConfigError
from facegate.fileio import read_limited


@dataclass(frozen=True)
class ConfigIssue:
    """One problem: key path (``cameras[0].url``), YAML line (1-based) or None, and message."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line else ""
        return f"{where}{self.path or '<top>'}: {self.message}"


def loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """Line of the deepest YAML node along ``loc`` (a key's own line for a mapping entry)."""
    node, line = root, (root.start_mark.line + 1) if root is not None else None
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    node, line = value, key.start_mark.line + 1
                    break
            else:
                return line
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line


def key_loc(path: str) -> tuple[Any, ...]:
    """A key path as written in issues (``doors[0].schedule.timezone``) → pydantic's loc tuple."""
    return tuple(int(p[1:-1]) if p.startswith("[") else p for p in re.findall(r"\[\d+\]|[^.\[\]]+", path))


#: A rule spanning sections (``Config``'s validator) starts its message with the key it is about.
_KEYED = re.compile(r"^([A-Za-z_]\w*(?:\[\d+\]|\.[A-Za-z_]\w*)*): (.+)$", re.S)


def _issues(exc: ValidationError, root: yaml.Node | None) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors():
        # pydantic appends the union member / validator names ("function-after[...]") to loc; drop them
        loc = tuple(p for p in err["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "literal[")))
        msg = err["msg"].removeprefix("Value error, ")
        if not loc and (keyed := _KEYED.match(msg)):
            loc, msg = key_loc(keyed.group(1)), keyed.group(2)
        if err["type"] not in ("missing", "extra_forbidden") and "input" in err and not isinstance(
                err["input"], dict | list):
            msg += f" (got {err['input']!r})"
        if err["type"] == "extra_forbidden":
            msg = "unknown key (misspelt? see config/example.yaml for every key)"
        issues.append(ConfigIssue(loc_path(loc), node_line(root, loc), msg))
    return issues


#: libyaml's safe loader when PyYAML was built with it (the same documents, marks and errors, ~10× faster), else the
#: pure-Python one.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


#: Flow collections ([…], {…}) nested deeper than this are refused before libyaml sees them (a real config nests a
#: handful; 30,000 levels in a 60 KB file crashed the C composer: second attack).
MAX_FLOW_DEPTH = 1000


def flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets in ``text``, counting ``[``/``{`` outside quoted scalars and
    comments (an over-estimate elsewhere is harmless: it only has to catch absurd depths)."""
    depth = deepest = 0
    quote = ""
    comment = False
    for ch in text:
        if comment:
            comment = ch != "\n"
        elif quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#":
            comment = True
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(0, depth - 1)
    return deepest


def compose_yaml(text: str) -> tuple[yaml.Node | None, Any]:
    """Parse YAML text once: (the node tree, with each node's line, for ``node_line``; the plain Python value built
    from that same tree). Raises ``yaml.YAMLError`` and ``RecursionError`` (nesting too deep)."""
    if flow_depth(text) > MAX_FLOW_DEPTH:  # libyaml's C composer crashes the process (SIGSEGV) near 30,000 levels
        raise RecursionError(f"more than {MAX_FLOW_DEPTH} nested [ or {{")
    loader = _LOADER(text)
    try:
        root = loader.get_single_node()
        return root, (loader.construct_document(root) if root is not None else None)
    finally:
        loader.dispose()


def parse_config(text: str, name: str = "<config>") -> tuple[Config | None, list[ConfigIssue]]:
    """Validate YAML text. Returns (config, []) or (None, every issue found). Never raises for bad input."""
    config, issues, _ = parse_config_tree(text, name)
    return config, issues


def parse_config_tree(text: str, name: str = "<config>") -> tuple[Config | None, list[ConfigIssue], yaml.Node | None]:
    """``parse_config`` plus the YAML node tree (None when the text is not YAML), for the lines of later issues."""
    try:
        root, raw = compose_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        return None, [ConfigIssue("", mark.line + 1 if mark else None, f"not valid YAML: {exc}")], None
    except RecursionError:
        return None, [ConfigIssue("", None, "not a config file: YAML nested too deeply")], None
    try:
        config, issues = _validate(raw, root)
    except RecursionError:  # libyaml composes any depth; walking the tree (or validating it) is what overflows
        return None, [ConfigIssue("", None, "not a config file: YAML nested too deeply")], None
    return config, issues, root


def _validate(raw: Any, root: yaml.Node | None) -> tuple[Config | None, list[ConfigIssue]]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        return None, [ConfigIssue("", 1, f"the top level must be a mapping of sections, not {type(raw).__name__}")]
    if _expanded_size(root, {}) > MAX_VALUES:  # YAML aliases can expand exponentially ("billion laughs")
        return None, [ConfigIssue("", None, f"not a config file: more than {MAX_VALUES:,} values once YAML "
                                  "aliases are expanded")]
    duplicates = _duplicate_keys(root)
    if duplicates:  # YAML keeps the last silently; an operator editing the first would be ignored
        return None, duplicates
    try:
        return Config.model_validate(raw), []
    except ValidationError as exc:
        issues = _issues(exc, root)
    # a section with a field error skips its cross-field validators: run those that work on raw values, so a file
    # with several mistakes gets them all in one pass
    known = " | ".join(i.message for i in issues)
    for loc, message in _raw_checks(raw):
        if message not in known:
            issues.append(ConfigIssue(loc_path(loc), node_line(root, loc), message))
    return None, issues


#: A real config has a few hundred values; this bounds what validation has to walk.
MAX_VALUES = 100_000
#: Largest config file read (bytes): a real one is a few KB; a bigger file is the wrong file.
MAX_CONFIG_BYTES = 1 << 20


def _expanded_size(node: yaml.Node | None, memo: dict[int, int]) -> int:
    """Number of nodes once aliases are expanded (memoised on node identity: linear in the file's own size)."""
    if node is None:
        return 0
    if id(node) in memo:
        return memo[id(node)]
    memo[id(node)] = MAX_VALUES + 1  # a cycle (not possible with SafeLoader's composer) counts as too large
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo) + _expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(v, memo) for v in node.value)
    else:
        size = 1
    memo[id(node)] = size = min(size, MAX_VALUES + 1)
    return size


def _duplicate_keys(root: yaml.Node | None) -> list[ConfigIssue]:
    """A key given twice in one mapping, anywhere in the file (PyYAML keeps the last one without a word)."""
    issues: list[ConfigIssue] = []
    stack: list[tuple[yaml.Node, str]] = [(root, "")] if root is not None else []
    visited: set[int] = set()
    while stack:
        node, path = stack.pop()
        if id(node) in visited:  # an alias: its target was checked where it was defined
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                name = str(key.value)
                if name in seen:
                    where = f"{path}.{name}" if path else name
                    issues.append(ConfigIssue(where, key.start_mark.line + 1,
                                              f"key given twice (first on line {seen[name]}); keep one"))
                seen.setdefault(name, key.start_mark.line + 1)
                stack.append((value, f"{path}.{name}" if path else name))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node.value))
    return sorted(issues, key=lambda i: i.line or 0)


def _raw_checks(raw: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    """Cross-field rules (k ≤ n, unique camera/door ids) and the time-zone check on the raw YAML values; used only
    when validation failed, to report in the same pass what the skipped checks would have found. The rules
    themselves live in ``facegate.config``."""
    out: list[tuple[tuple[Any, ...], str]] = []
    dec = raw.get("decision")
    if isinstance(dec, dict):
        defaults = DecisionConfig()
        k, n = dec.get("k", defaults.k), dec.get("n", defaults.n)
        if type(k) is int and type(n) is int and (problem := k_le_n_problem(k, n)):
            out.append((("decision",), problem))
    for section in ("cameras", "doors"):
        items = raw.get(section)
        if isinstance(items, list):
            ids = [x["id"] for x in items if isinstance(x, dict) and isinstance(x.get("id"), str)]
            if problem := duplicate_ids_problem(section, ids):
                out.append(((section,), problem))
    doors = raw.get("doors")
    for i, door in enumerate(doors if isinstance(doors, list) else []):
        schedule = door.get("schedule") if isinstance(door, dict) else None
        tz = schedule.get("timezone") if isinstance(schedule, dict) else None
        if isinstance(tz, str) and (problem := tz_problem(tz)):
            out.append((("doors", i, "schedule", "timezone"), problem))
    return out


def load_config(path: str | Path) -> Config:
    """Read, validate and resolve a config file (relative paths → absolute, against the file's folder).

    Raises ``ConfigError`` listing every problem with its key path and line.
    """
    path = Path(path)
    text, issue = read_text(path)
    if issue is not None:
        raise ConfigError(f"{path}: {issue.message}")
    config, issues = parse_config(text, str(path))
    if config is None:
        raise ConfigError(f"{path}: {len(issues)} problem(s):\n" + "\n".join(f"  {path}:{i}" for i in issues))
    return resolve_paths(config, path.parent)


def read_text(path: Path) -> tuple[str, ConfigIssue | None]:
    """The config file as text, or ("", issue) when it cannot be read, is not a regular file (a device or a FIFO
    is refused before reading), holds more than ``MAX_CONFIG_BYTES`` or is not UTF-8 text (e.g. a binary file
    given by mistake)."""
    try:
        data = read_limited(path, MAX_CONFIG_BYTES, "a config file")
    except OSError as exc:
        return "", ConfigIssue("", None, f"cannot read the config file: {exc.strerror or exc}")
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return "", ConfigIssue("", line, f"not a UTF-8 text file (byte {exc.start} is 0x{data[exc.start]:02x}); "
                               "a config file is YAML text, see config/example.yaml")


def resolve_paths(config: Config, base: Path) -> Config:
    """Return a copy whose relative file paths (camera files, the doors' passage keys, TLS, password, audit, key,
    gallery, snapshots, the console's TLS and tokens files) are absolute."""

    def fix(value: str | None) -> str | None:
        if value is None:
            return None
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else (base / p).resolve())

    cams = [c.model_copy(update={"file": fix(c.file)}) for c in config.cameras]
    doors = [d.model_copy(update={"passage_public_key": fix(d.passage_public_key)}) for d in config.doors]
    tls = config.mqtt.tls
    if tls is not None:
        tls = tls.model_copy(update={"ca": fix(tls.ca), "cert": fix(tls.cert), "key": fix(tls.key)})
    admin = config.admin
    admin_tls = admin.tls
    if admin_tls is not None:
        admin_tls = admin_tls.model_copy(update={"cert": fix(admin_tls.cert), "key": fix(admin_tls.key)})
    pack = config.pack
    if pack.endswith((".yaml", ".yml")):
        pack = fix(pack) or pack
    return config.model_copy(update={
        "cameras": cams,
        "doors": doors,
        "pack": pack,
        "mqtt": config.mqtt.model_copy(update={"tls": tls, "password_file": fix(config.mqtt.password_file)}),
        # model_copy, not a new model: a resolved path may be longer than the written one and must not fail here
        "audit": config.audit.model_copy(update={"path": fix(config.audit.path)}),
        "signing": config.signing.model_copy(update={"key_file": fix(config.signing.key_file)}),
        "gallery": config.gallery.model_copy(update={"path": fix(config.gallery.path)}),
        "service": config.service.model_copy(update={"state_dir": fix(config.service.state_dir)}),
        "snapshots": config.snapshots.model_copy(update={"path": fix(config.snapshots.path)}),
        "admin": admin.model_copy(update={"tls": admin_tls, "tokens_file": fix(admin.tokens_file)}),
    })
