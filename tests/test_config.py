"""Daemon configuration: validation, error reporting (key path + YAML line), environment checks, the shipped
example/demo files, and the mapping of config sections to the runtime's plain constructors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import typing
from datetime import UTC, datetime
from pathlib import Path

import pytest
from conftest import DATA
from pydantic import BaseModel

from facegate.config import CameraConfig, Config
from facegate.config_checks import check_file
from facegate.config_file import load_config, parse_config
from facegate.errors import ConfigError, VideoError
from facegate.runtime.capture import cameras_from_args
from facegate.runtime.rules import DEFAULT_DOOR, AccessRules, camera_doors

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "config" / "example.yaml"
STAGE_CLIP = DATA / "videos" / "stage_clip_640x360.mp4"
DEMO = REPO / "config" / "demo.yaml"


def _models(model: type[BaseModel], seen: set | None = None) -> list[type[BaseModel]]:
    """Every section model reachable from ``model``."""
    seen = seen if seen is not None else set()
    if model in seen:
        return []
    seen.add(model)
    out = [model]
    for field in model.model_fields.values():
        for arg in [field.annotation, *typing.get_args(field.annotation)]:
            for inner in [arg, *typing.get_args(arg)]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    out += _models(inner, seen)
    return out


def _issues(text: str) -> list[str]:
    config, issues = parse_config(textwrap.dedent(text))
    assert config is None
    return [str(i) for i in issues]


def test_every_field_has_a_description_and_forbids_extra_keys():
    models = _models(Config)
    assert len(models) >= 12
    for model in models:
        assert model.model_config.get("extra") == "forbid", model.__name__
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"


def test_example_documents_every_key_and_is_valid():
    text = EXAMPLE.read_text()
    for model in _models(Config):
        for name in model.model_fields:
            assert f"{name}:" in text, f"config/example.yaml does not mention {model.__name__}.{name}"
    config, issues = check_file(EXAMPLE)
    assert issues == [] and config is not None
    assert [c.id for c in config.cameras] == ["front-door", "demo-file"]
    assert Path(config.cameras[1].file).is_absolute()


def test_demo_and_empty_configs_run_on_defaults():
    config = load_config(DEMO)
    assert config.pack == "default" and config.mqtt.host is None and len(config.cameras) == 1
    empty, issues = parse_config("")
    assert issues == [] and empty == Config()
    assert empty.decision.threshold is None  # the pack's operating point


def test_every_error_has_its_key_path_and_line():
    issues = _issues("""
        cameras:
          - id: cam1
            url: rtsp://a:b@host/x
            fps_limt: 5
          - id: cam2
            file: x.mp4
            usb: 1
        decision:
          k: 7
          n: 5
        doors:
          - id: front
            schedule:
              timezone: Europe/Berlin
              windows:
                - {days: [mon, funday], start: "08:00", end: "18:00"}
        mqtt:
          port: 70000
          qos: 0
        """)
    assert issues[0].startswith("line 5: cameras[0].fps_limt: unknown key")
    assert issues[1].startswith("line 6: cameras[1]: give exactly one of url, usb, device or file")
    assert issues[2].startswith("line 9: decision: k (7) must be ≤ n (5)")
    assert issues[3].startswith("line 17: doors[0].schedule.windows[0].days[1]:") and "'funday'" in issues[3]
    assert issues[4].startswith("line 19: mqtt.port:") and "70000" in issues[4]
    assert issues[5].startswith("line 20: mqtt.qos:")
    assert len(issues) == 6


@pytest.mark.parametrize(("text", "expected"), [
    ("cameras:\n  - {id: a, usb: 0, door: nowhere}\ndoors:\n  - {id: front}\n", "which is not in doors"),
    ("cameras:\n  - {id: a, usb: 0}\n  - {id: a, usb: 1}\n", "duplicate id(s) a"),
    ("cameras:\n  - {id: a, usb: 0}\ndoors:\n  - {id: d1, cameras: [a]}\n  - {id: d2, cameras: [a]}\n",
     "listed by several doors"),
    ("doors:\n  - {id: d1, cameras: [ghost]}\n", "which is not in cameras"),
    ("cameras:\n  - {id: a, url: 10.0.0.1/stream}\n", "has no scheme"),
    ("cameras:\n  - {id: a, usb: 0, loop: true}\n", "file cameras only"),
    ("mqtt: {password_env: X}\n", "needs a username"),
    ("mqtt: {tls: {cert: c.pem}}\n", "cert and key go together"),
    ("doors:\n  - id: d\n    schedule: {timezone: 'not a zone', windows: [{days: [mon], start: '08:00', "
     "end: '09:00'}]}\n",
     "not an IANA time zone name"),
    ("doors:\n  - id: d\n    schedule: {timezone: UTC, windows: [{days: [mon], start: '08:00', end: '08:00'}]}\n",
     "window would be empty"),
    ("cameras: {id: a}\n", "Input should be a valid list"),
    ("liveness: {enabled: true, frames: 9}\n", "must be ≤ decision.n"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("doors:\n  - id: d\n    schedule: {timezone: UTC, windows: [{days: [mon], start: 7:00, end: '19:00'}]}\n",
     'write times in quotes, e.g. "07:00"'),
    ("decision: {threshold: .nan}\n", "finite number"),
    ("cameras:\n  - {id: a, usb: 0, stall_timeout_s: .inf}\n", "finite number"),
    ("inference: {threads: 1000000}\n", "less than or equal to 256"),
    ("foo: " + "[" * 30000 + "]" * 30000 + "\n", "nested too deeply"),  # crashed libyaml (SIGSEGV) before
    ("mqtt: {host: localhost}\ndoors:\n  - {id: d, anti_passback: true, anti_passback_confirmed: true}\n",
     "doors[0].anti_passback_confirmed: counts only passages signed by the door agent, so it needs "
     "passage_public_key"),
])
def test_bad_values_are_named(text, expected):
    issues = _issues(text)
    assert any(expected in i for i in issues), issues


def test_yaml_syntax_error_gives_the_line():
    issues = _issues("cameras:\n  - id: a\n    usb: [0\n")
    assert len(issues) == 1 and "not valid YAML" in issues[0] and issues[0].startswith("line ")


def test_environment_checks_name_key_and_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent("""
        cameras:
          - id: a
            file: missing.mp4
        doors:
          - id: d
            schedule:
              timezone: Mars/Olympus_Mons
              windows: [{days: [mon], start: "08:00", end: "09:00"}]
        signing:
          key_file: nokey
        mqtt:
          host: localhost
          username: u
          password_env: FACEGATE_TEST_SURELY_UNSET
        pack: no-such-pack
        """).replace("    schedule:", "    anti_passback_confirmed: true\n    passage_public_key: nokey\n"
                     "    schedule:", 1))
    config, issues = check_file(cfg)
    got = {i.path: (i.line, i.message) for i in issues}
    assert got["cameras[0].file"][0] == 4 and "does not exist" in got["cameras[0].file"][1]
    assert got["doors[0].schedule.timezone"][0] == 10 and "Mars/Olympus_Mons" in got["doors[0].schedule.timezone"][1]
    assert got["signing.key_file"][0] == 13 and str(tmp_path / "nokey") in got["signing.key_file"][1]
    assert "FACEGATE_TEST_SURELY_UNSET" in got["mqtt.password_env"][1]
    assert "unknown model pack 'no-such-pack'" in got["pack"][1] and got["pack"][0] == 18
    assert got["doors[0].passage_public_key"][0] == 8 and str(tmp_path / "nokey") in \
        got["doors[0].passage_public_key"][1]


def test_config_check_cli_exits_2_with_every_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cameras:\n  - id: a\n    usb: 0\n    fps: 3\ndecision: {k: 9}\n")
    run = subprocess.run([sys.executable, "-m", "facegate.cli", "config", "check", str(bad)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert f"{bad}:line 4: cameras[0].fps: unknown key" in run.stderr
    assert f"{bad}:line 5: decision: k (9) must be ≤ n (5)" in run.stderr
    assert "Traceback" not in run.stderr
    ok = subprocess.run([sys.executable, "-m", "facegate.cli", "config", "check", str(EXAMPLE)],
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and '"valid": true' in ok.stdout


def test_one_bad_section_does_not_hide_the_problems_of_the_others(tmp_path):
    """New-user trial: a decision section with both threshold and false_accept_rate hid a missing video and a
    public key given as the signing key; now one pass lists all three."""
    from facegate.signing import generate_key_pair

    pair = generate_key_pair(tmp_path / "keys", "event-signing")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(textwrap.dedent(f"""
        cameras:
          - {{id: a, file: missing.mp4}}
        decision: {{threshold: 5.0, false_accept_rate: 1.0e-4}}
        signing: {{key_file: {pair.public}}}
        """))
    config, issues = check_file(cfg)
    got = {i.path: (i.line, i.message) for i in issues}
    assert config is None and set(got) == {"decision", "cameras[0].file", "signing.key_file"}, got
    assert got["cameras[0].file"][0] == 3 and "this is a public key" in got["signing.key_file"][1]


def test_a_passage_key_must_be_the_door_agents_own(tmp_path):
    """Second attack: the daemon's event key as a door's passage key let a republished grant event count as a
    passage; one key for two doors let one agent confirm the other's. config check refuses both, as the daemon."""
    from facegate.signing import generate_key_pair

    state = tmp_path / "state"
    event = generate_key_pair(state, "event-signing")
    own = generate_key_pair(tmp_path / "agents", "door-a")
    cfg = tmp_path / "c.yaml"
    for keys, needle in (((event.public, own.public), "the daemon's own event signing key"),
                         ((own.public, own.public), "share one passage_public_key"), ((own.public,), None)):
        doors = "".join(f"  - {{id: d{i}, anti_passback: true, anti_passback_confirmed: true, "
                        f"passage_public_key: {k}}}\n" for i, k in enumerate(keys))
        cfg.write_text(f"service: {{state_dir: {state}}}\nmqtt: {{host: localhost}}\ncameras:\n"
                       f"  - {{id: a, usb: 0, door: d0}}\ndoors:\n{doors}")
        _, issues = check_file(cfg)
        if needle is None:
            assert issues == [], issues
        else:
            assert [i.path for i in issues] == ["doors"] and needle in issues[0].message, issues


def test_config_check_warns_of_no_doors_and_no_liveness_without_failing(tmp_path):
    if not STAGE_CLIP.exists():
        pytest.skip("needs ../shared/data/videos/stage_clip_640x360.mp4")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"cameras:\n  - {{id: a, file: {STAGE_CLIP}}}\n")
    run = subprocess.run([sys.executable, "-m", "facegate.cli", "config", "check", str(cfg)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "facegate: warning:" in run.stderr and "every enrolled identity is admitted at any time" in run.stderr
    assert "a photo or screen of an enrolled face held up to the camera can be granted" in run.stderr
    assert len(json.loads(run.stdout)["warnings"]) == 2


def test_config_check_refuses_what_run_refuses_on_opening_the_gallery(tmp_path, enrolled_gallery):
    """The gallery's templates are of the default pack: another pack, or a false-accept goal its size cannot meet,
    is refused by `config check` as by `run` (found by the new-user trial: check said valid, run refused)."""
    cfg = tmp_path / "c.yaml"
    base = f"gallery: {{path: {enrolled_gallery}}}\ncameras:\n  - {{id: a, usb: 0}}\n"
    cfg.write_text(base + "pack: yunet-mobilefacenet\n")
    _, issues = check_file(cfg)
    assert [i.path for i in issues] == ["pack"] and "holds templates of pack default" in issues[0].message
    cfg.write_text(base + "decision: {false_accept_rate: 1.0e-9}\n")
    _, issues = check_file(cfg)
    assert [i.path for i in issues] == ["decision.false_accept_rate"] and "cannot be met" in issues[0].message
    cfg.write_text(base + "decision: {false_accept_rate: 1.0e-3}\n")
    assert check_file(cfg)[1] == []


def _state(folder: Path) -> dict:
    return {p.name: (p.stat().st_mode, p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(folder.iterdir())} | {
        ".": folder.stat().st_mode}


def test_config_check_only_reads_the_gallery(tmp_path, enrolled_gallery):
    """Second attack: config check opened the gallery as a writer (schema created in a foreign SQLite file, a
    duplicate row migrated away, modes changed, a lock file created). Now nothing in the folder changes, and what is
    not a gallery is named."""
    import shutil
    import sqlite3

    real = tmp_path / "real"
    shutil.copytree(enrolled_gallery, real)
    real.chmod(0o755)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    with sqlite3.connect(foreign / "gallery.db") as db:
        db.execute("CREATE TABLE foo (x)")
    (foreign / "gallery.db").chmod(0o644)
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "gallery.db")
    cfg = tmp_path / "c.yaml"
    for folder, needle in ((real, None), (foreign, "not a facegate gallery"), (fifo, "not a regular file")):
        before = _state(folder) if folder is not fifo else None
        cfg.write_text(f"gallery: {{path: {folder}}}\ncameras:\n  - {{id: a, usb: 0}}\n")
        _, issues = check_file(cfg)
        if needle is None:
            assert issues == []
        else:
            assert [i.path for i in issues] == ["gallery.path"] and needle in issues[0].message, issues
        if before is not None:
            assert _state(folder) == before, folder


def test_load_config_raises_with_all_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("decision: {k: 0}\nmqtt: {port: 0}\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "2 problem(s)" in str(err.value) and "decision.k" in str(err.value) and "mqtt.port" in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_doors_map_to_access_rules():
    config, issues = parse_config(textwrap.dedent("""
        cameras:
          - {id: a, usb: 0, door: front}
          - {id: b, usb: 1}
        doors:
          - id: front
            allowed_groups: [staff]
            cooldown_s: 7
            anti_passback: true
            anti_passback_s: 60
            schedule:
              timezone: Europe/Berlin
              windows:
                - {days: [mon, tue, wed, thu, fri], start: "07:00", end: "19:00"}
          - {id: back, cameras: [b], allowed_groups: []}
        """))
    assert issues == []
    rules = AccessRules.from_config(config)
    kw = dict(identity_id=1, door="front", now=100.0)
    monday_noon_berlin = datetime(2026, 11, 30, 11, 0, tzinfo=UTC)  # 12:00 CET
    monday_late = datetime(2026, 11, 30, 18, 30, tzinfo=UTC)  # 19:30 CET
    sunday = datetime(2026, 11, 29, 11, 0, tzinfo=UTC)
    assert rules.check(groups=["staff"], wall=monday_noon_berlin, **kw) is None
    assert rules.check(groups=["guests"], wall=monday_noon_berlin, **kw) == "not_in_group"
    assert rules.check(groups=["staff"], wall=monday_late, **kw) == "outside_schedule"
    assert rules.check(groups=["staff"], wall=sunday, **kw) == "outside_schedule"
    rules.record_grant(1, "front", 100.0)
    assert rules.check(groups=["staff"], wall=monday_noon_berlin, identity_id=1, door="front", now=105.0) == "cooldown"
    assert rules.check(groups=["staff"], wall=monday_noon_berlin, identity_id=1, door="front",
                       now=130.0) == "anti_passback"
    assert rules.check(groups=["staff"], wall=monday_noon_berlin, identity_id=2, door="back",
                       now=1.0) == "not_in_group"
    assert camera_doors(config, config.cameras) == {"a": "front", "b": "back"}


def test_no_doors_means_one_default_door():
    config = Config(cameras=[CameraConfig(id="x", usb=0)])
    rules = AccessRules.from_config(config)
    (door,) = rules.doors.values()
    assert door.id == DEFAULT_DOOR and door.allowed_groups is None and door.schedule is None
    assert camera_doors(config, config.cameras) == {"x": DEFAULT_DOOR}


def _one_window(start: str, end: str, days: str = "[mon, tue, wed, thu, fri, sat, sun]") -> AccessRules:
    config, issues = parse_config(textwrap.dedent(f"""
        doors:
          - id: front
            schedule:
              timezone: Europe/Berlin
              windows: [{{days: {days}, start: "{start}", end: "{end}"}}]
        """))
    assert issues == [], issues
    return AccessRules.from_config(config)


@pytest.mark.parametrize("end", ["23:59:59", "24:00"])
def test_schedule_keeps_seconds_from_yaml_to_the_rule(end):
    # the bug of issue 11: the window was rendered as "HH:MM" and re-parsed, so 23:59:59 became 23:59 and a known
    # person at 23:59:30 was denied outside_schedule
    rules = _one_window("07:00", end)
    at = datetime(2026, 11, 30, 22, 59, 30, tzinfo=UTC)  # Monday 23:59:30 CET
    assert rules.check(identity_id=1, groups=(), door="front", wall=at, now=0.0) is None
    last = datetime(2026, 11, 30, 22, 59, 59, 500000, tzinfo=UTC)  # 23:59:59.5
    assert (rules.check(identity_id=1, groups=(), door="front", wall=last, now=0.0) is None) == (end == "24:00")
    early = datetime(2026, 11, 30, 5, 59, 59, tzinfo=UTC)  # 06:59:59 CET
    assert rules.check(identity_id=1, groups=(), door="front", wall=early, now=0.0) == "outside_schedule"


def test_schedule_seconds_at_the_start_and_an_overnight_window():
    rules = _one_window("07:00:30", "07:00:45")
    inside = datetime(2026, 11, 30, 6, 0, 40, tzinfo=UTC)  # 07:00:40 CET
    outside = datetime(2026, 11, 30, 6, 0, 20, tzinfo=UTC)  # 07:00:20 CET
    assert rules.check(identity_id=1, groups=(), door="front", wall=inside, now=0.0) is None
    assert rules.check(identity_id=1, groups=(), door="front", wall=outside, now=0.0) == "outside_schedule"
    night = _one_window("22:00", "06:00", days="[fri]")  # a night shift: belongs to Friday, ends Saturday 06:00
    saturday_3am = datetime(2026, 12, 5, 2, 0, tzinfo=UTC)  # Sat 03:00 CET
    saturday_night = datetime(2026, 12, 5, 22, 0, tzinfo=UTC)  # Sat 23:00 CET: Saturday is not in the window
    assert night.check(identity_id=1, groups=(), door="front", wall=saturday_3am, now=0.0) is None
    assert night.check(identity_id=1, groups=(), door="front", wall=saturday_night, now=0.0) == "outside_schedule"


def test_an_empty_window_is_refused():
    _, issues = parse_config('doors: [{id: a, schedule: {timezone: UTC, windows: [{days: [mon], start: "08:00", '
                             'end: "08:00"}]}}]')
    assert len(issues) == 1 and "empty" in issues[0].message and issues[0].path.endswith("windows[0]")


def test_cameras_from_command_line(tmp_path):
    video = tmp_path / "v.mp4"
    video.write_bytes(b"x")
    cams = cameras_from_args(["rtsp://u:p@h/s", "0", "/dev/video3", str(video)], loop=True, first=2)
    assert [c.id for c in cams] == ["cam2", "cam3", "cam4", "cam5"]
    assert [c.kind for c in cams] == ["url", "usb", "device", "file"]
    assert cams[0].describe() == "rtsp://u:***@h/s" and cams[3].loop
    with pytest.raises(VideoError, match="no such video file"):
        cameras_from_args([str(tmp_path / "nope.mp4")])


def test_binary_config_file_is_a_config_error_not_a_traceback(tmp_path):
    binary = tmp_path / "facegate.yaml"
    binary.write_bytes(b"cameras:\n  - id: a\n\xff\xfe\x00\x89PNG\r\n")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_config(binary)
    config, issues = check_file(binary)
    assert config is None and len(issues) == 1 and issues[0].line == 3
    for args in (["config", "check", str(binary)], ["run", "--config", str(binary)]):
        run = subprocess.run([sys.executable, "-m", "facegate.cli", *args], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 2 and "not a UTF-8 text file" in run.stderr and "Traceback" not in run.stderr


def test_several_mistakes_are_all_reported_in_one_pass():
    # a field error in a section skips that section's and the top level's validators; they still get reported
    issues = _issues("""
        cameras:
          - {id: a, usb: 0, fps_limit: -1}
          - {id: a, usb: 1}
        decision: {k: 9, n: 5, margin: -1}
        doors:
          - {id: d, cooldown_s: -3}
          - id: d
            schedule: {timezone: Mars/Olympus_Mons, windows: [{days: [mon], start: "08:00", end: "09:00"}]}
        mqtt: {prot: 1883}
        """)
    text = "\n".join(issues)
    for expected in ("line 3: cameras[0].fps_limit:", "line 5: decision.margin:", "line 7: doors[0].cooldown_s:",
                     "line 10: mqtt.prot: unknown key", "line 5: decision: k (9) must be ≤ n (5)",
                     "line 2: cameras: duplicate id(s) a", "line 6: doors: duplicate id(s) d",
                     "line 9: doors[1].schedule.timezone: unknown time zone 'Mars/Olympus_Mons'"):
        assert expected in text, text
    assert len(issues) == 8, issues


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "facegate.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_check_runs_every_start_up_check_of_run(tmp_path):
    (tmp_path / "plainfile").write_text("x")
    key = tmp_path / "key"
    key.write_text("k" * 40)
    key.chmod(0o644)
    cfg = _write(tmp_path, """
        liveness: {enabled: true}
        audit: {path: plainfile/audit.jsonl}
        gallery: {path: plainfile/gallery}
        service: {state_dir: state}
        signing: {algorithm: hmac-sha256, key_file: key}
        """)
    config, issues = check_file(cfg)
    got = {i.path: i for i in issues}
    assert set(got) == {"cameras", "liveness.enabled", "audit.path", "gallery.path", "signing.key_file"}, issues
    assert "no cameras" in got["cameras"].message
    assert "has no liveness model" in got["liveness.enabled"].message and got["liveness.enabled"].line == 2
    assert "parent is not a folder" in got["audit.path"].message and got["audit.path"].line == 3
    assert "parent is not a folder" in got["gallery.path"].message
    assert "readable or writable by other users" in got["signing.key_file"].message
    # --camera on the command line supplies the camera, as for `facegate run`
    _, issues = check_file(cfg, cameras_from_args(["0"]))
    assert "cameras" not in {i.path for i in issues}
    run = subprocess.run([sys.executable, "-m", "facegate.cli", "config", "check", str(cfg)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and run.stderr.count("facegate: error:") == 5, run.stderr
    # `facegate run` refuses the same file with the same messages, before loading anything
    run = subprocess.run([sys.executable, "-m", "facegate.cli", "run", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    for i in issues:
        assert i.message in run.stderr
    cfg.write_text("cameras: [{id: a, usb: 0}]\ninference: {providers: [CPUExecutionProvidr]}\n")
    (issue,) = check_file(cfg)[1]
    assert issue.path == "inference.providers[0]" and "unknown execution provider 'CPUExecutionProvidr'" in str(issue)
    key.chmod(0o600)
    (tmp_path / "plainfile").unlink()
    cfg.write_text("cameras: [{id: a, usb: 0}]\naudit: {path: plainfile/audit.jsonl}\n"
                   "signing: {algorithm: hmac-sha256, key_file: key}\n"
                   "gallery: {path: g}\nservice: {state_dir: state}\n")
    assert check_file(cfg)[1] == []


def test_shipped_files_name_real_paths_and_commands():
    # the commented alternative in example.yaml resolves, like a real key, against config/
    line = next(x for x in EXAMPLE.read_text().splitlines() if x.strip().startswith("# file:"))
    commented = line.split("# file:")[1].split("#")[0].strip()
    shared = (EXAMPLE.parent / commented).resolve()
    assert shared == (REPO.parent / "shared" / "data" / "videos" / "stage_clip_640x360.mp4").resolve()
    demo = DEMO.read_text()
    assert "facegate enroll" in demo and "facegate gallery …" not in demo
    config = load_config(DEMO)
    assert config.cameras[0].file == str(shared)
    assert config.gallery.refresh_s == 2.0


def test_hostile_yaml_is_refused_with_a_message():
    dup = _issues("decision: {k: 3}\nmqtt: {port: 1883}\ndecision: {k: 9}\n")
    assert dup == ["line 3: decision: key given twice (first on line 1); keep one"]
    assert _issues("cameras:\n  - {id: a, usb: 0, usb: 1}\n") == [
        "line 2: cameras[0].usb: key given twice (first on line 2); keep one"]
    deep = _issues("a: " + "[" * 5000 + "]" * 5000 + "\n")
    assert deep == ["<top>: not a config file: YAML nested too deeply"]
    laughs = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    laughs += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    (issue,) = _issues("\n".join(laughs) + "\ncameras: *a9\n")
    assert "more than 100,000 values once YAML aliases are expanded" in issue
    # an alias used a few times is fine
    config, issues = parse_config("doors:\n  - {id: a, allowed_groups: &g [staff, guests]}\n"
                                  "  - {id: b, allowed_groups: *g}\n")
    assert issues == [] and config.doors[1].allowed_groups == ["staff", "guests"]


@pytest.mark.parametrize("host", ["a" * 64, "broker..example", ".broker"])
def test_a_broker_name_paho_cannot_resolve_is_a_config_error(host):
    # paho resolves mqtt.host on its own thread: an unencodable name (a label over 63 characters) killed that thread
    _, issues = parse_config(f"mqtt: {{host: '{host}'}}\n")
    assert len(issues) == 1 and issues[0].path == "mqtt.host" and "not a host name" in issues[0].message
