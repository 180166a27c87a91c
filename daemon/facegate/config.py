"""The daemon's configuration model: one typed, validated ``Config`` (pydantic v2), one section per stage.

One model per section, ``extra="forbid"`` (a misspelt key is an error, not silently ignored) and a description on
every field (``config/example.yaml`` documents the same keys). Each setting has one name from YAML to code: the
stages take these sections as they are (``runtime/rules.py`` reads ``DoorConfig``, ``runtime/decision.py`` reads
``DecisionConfig``, …) and trust them, so every default and every rule lives here once. Rules that span fields are
plain functions (``k_le_n_problem``, ``duplicate_ids_problem``) used by the validators and, when field errors stop
those, by ``facegate.config_file`` on the raw values.

Validation is pure: validators never touch the file system or the network. Checks that need I/O (a time zone that
exists in the tz database, readable key files, an installed pack) are ``facegate.config_checks``, run by
``facegate config check``, at start-up and on every SIGHUP reload. Reading a file: ``facegate.config_file``.
"""

from __future__ import annotations

import re
from datetime import time as dtime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from facegate.config_rules import (
    duplicate_ids_problem,
    k_le_n_problem,
    lookalike_margin_problem,
    threshold_or_rate_problem,
)
from facegate.limits import MAX_THREADS, MAX_WAIT_S, StrictSection, host_problem

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Weekday keys of schedule windows, in ``datetime.weekday()`` order.
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: A topic segment must not contain MQTT wildcards or separators (MQTT 3.1.1 §4.7).
_TOPIC_PREFIX = r"^[^#+\x00]+$"
#: Longest path a setting may name: Linux's PATH_MAX (4096 bytes with the NUL; ≤ 4 bytes per character).
_PATH_MAX = 4095
#: Longest position in a video file (s): a year; OpenCV seeks in milliseconds held as a double and FFmpeg converts
#: them to 64-bit stream ticks, far above a year at any time base.
_MAX_VIDEO_POS_S = 31_536_000.0
#: Longest rule duration (cooldown, anti-passback): a week; they are compared with monotonic seconds only, but a
#: longer value is a typo (an anti-passback that outlasts the week nobody would reset).
_MAX_RULE_S = 604_800.0


class _Section(StrictSection):
    """Every section: unknown keys are errors, no inf/NaN, no boolean for a number, no number for a boolean, no NUL
    in text (``facegate.limits.StrictSection``)."""


class MotionConfig(_Section):
    """Idle gating of one camera (``runtime/gating.py``): the face detector runs on a frame only when the camera's
    picture changed inside its zone, while a face was seen within ``decision.track_max_age_s`` (a live track keeps
    detection on), or when ``detect_every_s`` passed since the last detection (a person standing still is still
    found). The change test compares each delivered frame with the previous one, grey and downscaled."""

    enabled: bool = Field(True, description="Gate the detector on picture change (false: detect on every frame)")
    threshold: int = Field(
        12, ge=1, le=255, description="Grey-level difference (0-255, on the downscaled frame) a pixel needs to "
        "count as changed; above compression and sensor noise")
    min_area: float = Field(
        0.002, gt=0, le=1, description="Share of the zone's pixels (0-1) that must change for the frame to count "
        "as changed")
    scale_px: int = Field(
        160, ge=16, le=1920, description="Width (px) the frame is reduced to for the change test (an integer "
        "factor of the frame width, so e.g. 640 and 768 px wide frames become 160 and 192 px)")
    detect_every_s: float = Field(
        1.0, gt=0, le=60, description="Run the detector at least this often (seconds) on an unchanged camera")


def zone_problem(points: list[tuple[float, float]]) -> str | None:
    """Why a zone polygon (normalised x, y in 0..1) is unusable, else None: fewer than 3 points, a coordinate
    outside 0..1, or no area (shoelace formula)."""
    if len(points) < 3:
        return f"a zone needs at least 3 points, got {len(points)}"
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            return (f"zone point [{x}, {y}] is outside 0..1: zone points are fractions of the frame's width and "
                    "height ([0, 0] top-left, [1, 1] bottom-right)")
    area = 0.5 * abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(points, points[1:] + points[:1],
                                                                          strict=True)))
    if area <= 1e-6:
        return "the zone has no area (its points are on one line)"
    return None


class CameraConfig(_Section):
    """One camera: exactly one of ``url``, ``usb``, ``device`` or ``file``."""

    id: str = Field(..., pattern=_ID, description="Camera id used in events, logs and topics (letters, digits, _.-)")
    # bounds: OpenCV takes timeouts as C ints of milliseconds (1 ms … 24.8 days; 0 would mean "its default"), the
    # waits go to threading (≤ MAX_WAIT_S), V4L2 numbers its devices /dev/video0…255, paths stop at PATH_MAX
    url: str | None = Field(None, min_length=4, max_length=2048, description="Stream URL, e.g. "
                            "rtsp://user:pass@10.0.0.5:554/stream1 (FFmpeg; at most 2048 characters)")
    usb: int | None = Field(None, ge=0, le=255, description="USB/V4L2 camera index 0…255 (0 = /dev/video0)")
    device: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                               description="Video device path, e.g. /dev/video2")
    file: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                             description="Video file (demo/tests); relative to the config file's folder")
    loop: bool = Field(False, description="file only: start again at the end instead of stopping the camera")
    start_s: float = Field(0.0, ge=0, le=_MAX_VIDEO_POS_S,
                           description="file only: start playing at this position (s, at most a year)")
    stop_s: float | None = Field(None, gt=0, le=_MAX_VIDEO_POS_S,
                                 description="file only: treat this position (s) as the end of the file")
    realtime: bool = Field(True, description="file only: play at the file's own fps (False: as fast as decoded)")
    fps_limit: float | None = Field(None, ge=0.01, le=1000, description="Deliver at most this many frames per "
                                    "second, 0.01…1000 (None: all)")
    door: str | None = Field(None, pattern=_ID, description="Id of the door this camera watches (see doors)")
    open_timeout_s: float = Field(10.0, ge=0.001, le=MAX_WAIT_S,
                                  description="Give up opening the source after this many seconds (0.001…86400)")
    read_timeout_s: float = Field(5.0, ge=0.001, le=MAX_WAIT_S, description="A single read that takes longer "
                                  "counts as a failure (s, 0.001…86400)")
    stall_timeout_s: float = Field(
        8.0, ge=1, le=MAX_WAIT_S, description="Watchdog: rebuild the capture when no frame arrived for this long "
        "(s, 1…86400; the watchdog looks every 0.5 s; an OpenCV read can block forever after an RTSP source comes "
        "back)")
    backoff_initial_s: float = Field(0.5, ge=0.01, le=MAX_WAIT_S, description="First reconnect delay (s, "
                                     "0.01…86400; shorter would hammer the source); doubled after each failure")
    backoff_max_s: float = Field(30.0, ge=0.01, le=MAX_WAIT_S,
                                 description="Longest reconnect delay (s, ≤ 86400; ±20 % jitter is added)")
    zone: list[tuple[float, float]] | None = Field(
        None, max_length=64, description="The door's area as a polygon of [x, y] points, fractions (0-1) of the "
        "frame's width and height, [0, 0] = top-left; only change inside it counts, and only faces whose box "
        "centre is inside it are tracked and recognised. None = the whole frame")
    motion: MotionConfig = Field(default_factory=MotionConfig, description="Idle gating of the detector")

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
        if value is not None and (problem := zone_problem(list(value))):
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _one_source(self) -> CameraConfig:
        given = [k for k in ("url", "usb", "device", "file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of url, usb, device or file (got {', '.join(given) or 'none'})")
        if self.url is not None and "://" not in self.url:
            raise ValueError(f"url {self.url!r} has no scheme; write e.g. rtsp://HOST:554/PATH")
        if self.file is None and (self.loop or self.start_s or self.stop_s is not None):
            raise ValueError("loop, start_s and stop_s apply to file cameras only")
        if self.stop_s is not None and self.stop_s <= self.start_s:
            raise ValueError("stop_s must be after start_s")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be ≥ backoff_initial_s")
        return self

    @property
    def kind(self) -> Literal["url", "usb", "device", "file"]:
        """Which source field is set."""
        for k in ("url", "usb", "device", "file"):
            if getattr(self, k) is not None:
                return k  # type: ignore[return-value]
        raise AssertionError("validated camera without a source")

    def describe(self) -> str:
        """The source for logs, with any password in a URL replaced by ``***``."""
        if self.url is not None:
            return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", self.url)
        return str(self.usb if self.usb is not None else self.device or self.file)


class DecisionConfig(_Section):
    """When a track becomes a grant, a deny or unknown (k-of-n voting; see runtime/decision.py)."""

    # bounds: scores of the known metrics lie in [-1, 1] (cosine) or [0, a few] (Euclidean distance); a vote window
    # is a deque (its length must fit memory and Py_ssize_t); expires_at is a datetime (year ≤ 9999) that the door
    # agent accepts only up to its checks.max_ttl_s ≤ 300 s; durations are compared with monotonic seconds
    threshold: float | None = Field(
        None, ge=-1000, le=1000, description="Comparison-score threshold (pack metric: distance ≤ t, similarity ≥ "
        "t or a fused LLR ≥ t; -1000…1000); None = derived from false_accept_rate when that is set, else the pack's "
        "measured operating point")
    false_accept_rate: float | None = Field(
        None, gt=0, lt=1, description="Goal: the chance per attempt that a stranger is granted as someone (e.g. "
        "1.0e-4); the threshold is derived from the pack's calibration, the live gallery size and the k-of-n vote "
        "(facegate/scoring.py). Not together with threshold")
    k: int = Field(3, ge=1, le=1000, description="Frames of the last n that must match the same identity for a "
                   "decision (1…n)")
    n: int = Field(5, ge=1, le=1000, description="Voting window in frames per track (1…1000: 33 s at 30 fps, "
                   "longer than a face stays in view)")
    margin: float | None = Field(
        None, ge=0, le=1000, description="Required gap between the best and the second-best identity's score (same "
        "units as the threshold); None = the pack's operating_point.margin (0.05 for distance and cosine packs, an "
        "LLR gap for the fused default pack)")
    unknown_after_s: float = Field(
        2.0, gt=0, le=MAX_WAIT_S, description="A track this old (seconds) without a grant or deny is unknown (so "
        "is one with n fresh frames and no identity reaching k)")
    max_frame_age_s: float = Field(
        1.0, gt=0, le=MAX_WAIT_S, description="Frames older than this (capture to decision, seconds) are dropped, "
        "never decided on")
    grant_ttl_s: float = Field(2.0, ge=0.1, le=300, description="A grant's expires_at is its decided_at plus this "
                               "(seconds, 0.1…300: the door agent refuses grants living longer than its "
                               "checks.max_ttl_s, at most 300)")
    repeat_after_s: float = Field(
        30.0, ge=0, le=MAX_WAIT_S, description="The same decision is not repeated for one track within this many "
        "seconds")
    track_min_affinity: float = Field(
        0.3, gt=0, le=1, description="Minimum box-IoU/landmark affinity for a face to continue a track")
    track_max_age_s: float = Field(1.0, gt=0, le=MAX_WAIT_S, description="A track without a detection for this "
                                   "long ends (s)")
    min_face_px: int = Field(
        40, ge=0, le=100_000, description="Faces narrower than this (px) are ignored: not embedded, never decided on "
        "(a face also needs the pack's recogniser.min_face_px to vote for a grant)")
    reverify_s: float = Field(
        1.0, ge=0, le=MAX_WAIT_S, description="A decided track (granted, denied or unknown, within its repeat window) "
        "is not embedded on every frame: its face is embedded again this often (seconds) to check the decision "
        "still holds; 0 = embed every face on every frame")
    reverify_iou: float = Field(
        0.5, ge=0, le=1, description="…and as soon as its box overlaps the box of its last check by less than this "
        "(IoU 0-1: the box jumped)")
    reverify_unknown: bool = Field(
        True, description="Treat a track decided unknown the same way when it is a clear stranger (every fresh "
        "frame's best score missed the threshold by at least margin); a check that matches or nearly matches "
        "anybody, or a box that grows as the person comes closer, puts it back on every frame. false = unknown "
        "tracks are embedded on every frame")
    lookalike_margin: float | None = Field(
        None, ge=0, le=1000, description="Between two enrolled identities closer to each other than the threshold "
        "(`facegate gallery list --lookalikes`), a frame votes for one only when it beats the other by this much "
        "(same units as the threshold; must be ≥ margin); None = the pack's operating_point.lookalike_margin")
    presence_gap_s: float = Field(
        3.0, gt=0, le=MAX_WAIT_S, description="A person seen again at the same camera within this many seconds is "
        "still the same passage: granted at most once (a broken track is not a new passage; keep it above "
        "reverify_s, the longest a decided track goes unchecked)")

    @model_validator(mode="after")
    def _cross_field(self) -> DecisionConfig:
        if problem := k_le_n_problem(self.k, self.n) or lookalike_margin_problem(self.margin, self.lookalike_margin):
            raise ValueError(problem)
        if problem := threshold_or_rate_problem(self.threshold, self.false_accept_rate):
            raise ValueError(problem)
        return self


class TimeWindow(_Section):
    """A weekly opening window in the door's time zone: on ``days``, from ``start`` to ``end`` (end exclusive).
    An ``end`` before ``start`` runs across midnight into the next day (a night shift, 22:00–06:00)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        ..., min_length=1, max_length=7, description="Weekdays (mon…sun) this window starts on")
    start: dtime = Field(..., description="Opening time \"HH:MM\" or \"HH:MM:SS\" (24 h), local to the door's "
                         "time zone")
    end: dtime = Field(..., description="Closing time (exclusive), \"HH:MM\" or \"HH:MM:SS\"; \"24:00\" = midnight; "
                       "before start = the next day")

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        # YAML 1.1 reads an unquoted 7:00 as the base-60 integer 420, which pydantic would take as 00:07:00
        if isinstance(value, int | float):
            raise ValueError(f"write times in quotes, e.g. \"07:00\" (YAML reads an unquoted 7:00 as the "
                             f"number {value})")
        return value

    @field_validator("end", mode="before")
    @classmethod
    def _midnight(cls, value: Any) -> Any:
        # datetime.time stops at 23:59:59.999999; "24:00" (ISO 8601's end of day) is read as that last instant
        if isinstance(value, str) and value.strip() in ("24:00", "24:00:00"):
            return dtime.max
        return value

    @field_validator("start", "end")
    @classmethod
    def _local(cls, value: dtime) -> dtime:
        if value.tzinfo is not None:
            raise ValueError("a window time is local to the schedule's timezone; drop the UTC offset")
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> TimeWindow:
        if self.end == self.start:
            raise ValueError(f"start and end are both {self.start}: the window would be empty (or a whole day: "
                             "write start \"00:00\", end \"24:00\")")
        return self


class ScheduleConfig(_Section):
    """A weekly schedule. No windows at all means the door is never open by schedule (fail closed)."""

    timezone: str = Field(..., max_length=255, description="IANA time zone name, e.g. Europe/Berlin (checked "
                          "against tzdata)")
    windows: list[TimeWindow] = Field(..., min_length=1, max_length=1000,
                                      description="Opening windows; a grant needs one to match")

    @field_validator("timezone")
    @classmethod
    def _tz_shape(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_+\-]+(/[A-Za-z0-9_+\-]+)*", value):
            raise ValueError(f"{value!r} is not an IANA time zone name like Europe/Berlin or UTC")
        return value


class DoorConfig(_Section):
    """A door: which cameras watch it and who may pass when."""

    id: str = Field(..., pattern=_ID, description="Door id; events go to <topic_prefix>/<door id>/event")
    cameras: list[str] = Field(
        default_factory=list, max_length=64, description="Camera ids watching this door (or set door: on the camera)")
    allowed_groups: list[str] | None = Field(
        None, max_length=1000, description="Gallery groups allowed through; null = every enrolled identity, [] = "
        "nobody")
    schedule: ScheduleConfig | None = Field(None, description="Weekly opening schedule; None = at any time")
    cooldown_s: float = Field(
        5.0, ge=0, le=_MAX_RULE_S, description="After a grant, the same person at this door is not granted again for "
        "this long (s, at most a week)")
    anti_passback: bool = Field(
        False, description="Refuse a second grant for the same person at this door until anti_passback_s passed")
    anti_passback_s: float = Field(
        600.0, gt=0, le=_MAX_RULE_S, description="Anti-passback window in seconds, at most a week (only with "
        "anti_passback: true)")
    exit: bool = Field(False, description="An exit door: a grant here clears the person's anti-passback state")
    anti_passback_confirmed: bool = Field(
        False, description="Count an entry (or an exit) for anti-passback only when the door agent reports that the "
        "door really opened after the grant (its passage event, `facegate door` with a door contact), as "
        "door-sensor-confirmed anti-passback does; needs mqtt.host and passage_public_key")
    passage_public_key: str | None = Field(
        None, min_length=1, max_length=_PATH_MAX, description="The door agent's Ed25519 public key (PEM; "
        "`facegate keys generate --name door-<id>` makes the pair: the agent signs its passages with the private "
        "half, inputs.passage_signing_key). With anti_passback_confirmed, only passages signed with it count: an "
        "unsigned passage could otherwise clear an exit and let a person in again")


class TlsConfig(_Section):
    """TLS to the broker; paths relative to the config file."""

    ca: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                           description="CA bundle that signed the broker's certificate (None: system CAs)")
    cert: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                             description="Client certificate (PEM) for mutual TLS")
    key: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                            description="Client private key (PEM) for mutual TLS")
    insecure: bool = Field(False, description="Skip host-name verification (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


class MqttConfig(_Section):
    """The broker the door controllers listen on. ``host: null`` runs without a broker (no door can be driven)."""

    # bounds: a DNS name has at most 253 characters; MQTT strings are UTF-8 of at most 65535 bytes without U+0000
    # (3.1.1 §1.5.3) and its keep-alive a 16-bit number of seconds (§3.1.2.10); waits go to threading
    host: str | None = Field(None, min_length=1, max_length=253,
                             description="Broker host name or IP; None = no broker (audit log/stdout only)")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (1883 plain, 8883 TLS)")
    tls: TlsConfig | None = Field(None, description="TLS settings; None = plain TCP")
    username: str | None = Field(None, min_length=1, max_length=1024, description="User name for the broker")
    password_file: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                                      description="File holding the password (first line)")
    password_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,254}$",
                                     description="Environment variable holding the password")
    client_id: str | None = Field(
        None, min_length=1, max_length=64, description="MQTT client id; None = facegate-<host name>-<8 hex of "
        "sha256(topic_prefix)>, unique per host and prefix (two clients with one id knock each other off the broker)")
    topic_prefix: str = Field("facegate", max_length=1024, pattern=_TOPIC_PREFIX,
                              description="Topics are <prefix>/<door>/event and <prefix>/status")
    qos: Literal[1, 2] = Field(1, description="QoS of events and status (≥1: door events must not be lost silently)")
    keepalive_s: int = Field(30, ge=5, le=65535, description="MQTT keep-alive (s, 5…65535: a 16-bit field); the "
                             "broker publishes the last will after 1.5×")
    connect_timeout_s: float = Field(10.0, ge=0.5, le=MAX_WAIT_S, description="Start-up waits this long for the "
                                     "first connection (s, 0.5…86400)")
    queue_max: int = Field(1000, ge=1, le=100_000, description="Events kept while the broker is away, 1…100000 "
                           "(≈ 1 KB each; oldest dropped first)")
    reconnect_min_s: float = Field(
        0.5, gt=0, le=3600, description="First reconnect delay after the broker went away (s); doubled after each "
        "failed attempt up to reconnect_max_s")
    reconnect_max_s: float = Field(
        2.0, gt=0, le=3600, description="Longest reconnect delay (s): the daemon is back within about this long "
        "of the broker's return")

    @model_validator(mode="after")
    def _reconnect(self) -> MqttConfig:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be ≥ reconnect_min_s")
        return self

    @model_validator(mode="after")
    def _password(self) -> MqttConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            raise ValueError("a password (password_file or password_env) needs a username")
        return self

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and (problem := host_problem(value)):
            raise ValueError(problem)
        return value



class HomeAssistantConfig(_Section):
    """Home Assistant MQTT discovery of the daemon's entities (status, per camera frames/s and online, per door an
    event entity). Off by default."""

    enabled: bool = Field(False, description="Announce the entities (retained discovery messages); needs mqtt.host")
    discovery_prefix: str = Field("homeassistant", max_length=1024, pattern=_TOPIC_PREFIX,
                                  description="Home Assistant's discovery prefix (its MQTT integration setting)")
    node_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$",
                                description="Device id in Home Assistant; None = facegate_<the MQTT client id>")
    state_every_s: float = Field(10.0, ge=1, le=3600,
                                 description="How often the cameras' frames/s and online state are published")


class AuditConfig(_Section):
    """The append-only audit log (JSON lines, fsync'd before any publish)."""

    path: str | None = Field(None, min_length=1, max_length=_PATH_MAX,
                             description="Audit log file; None = audit.jsonl in the state directory")


class SigningConfig(_Section):
    """How door events are signed (``facegate.signing``): Ed25519 (payload version 2; doors hold only the public
    key and cannot forge) or HMAC-SHA256 (version 1; every door holding the shared key could forge grants)."""

    algorithm: Literal["ed25519", "hmac-sha256"] = Field(
        "ed25519", description="ed25519 (payload version 2, the default) or hmac-sha256 (version 1, for door "
        "controllers that only speak it)")
    key_file: str | None = Field(
        None, min_length=1, max_length=_PATH_MAX, description="ed25519: the private key (PKCS#8 PEM, `facegate keys "
        "generate`); hmac-sha256: the secret (≥32 bytes). None = in the state directory, created on first run: "
        "event-signing.key (+ .pub for the doors) for ed25519, signing.key for hmac-sha256")


class GalleryConfig(_Section):
    """Where the enrolled identities live."""

    path: str | None = Field(
        None, min_length=1, max_length=_PATH_MAX, description="Gallery folder; None = the one `facegate enroll` "
        "uses by default ($FACEGATE_GALLERY, else "
        "$XDG_DATA_HOME/facegate/gallery)")
    refresh_s: float = Field(
        2.0, ge=0, le=MAX_WAIT_S, description="The running daemon re-reads the gallery this often (seconds), so an "
        "enrolment or "
        "an erasure (`facegate gallery remove`) takes effect within about this long; 0 = only on SIGHUP")


class LivenessConfig(_Section):
    """Presentation-attack detection (needs a pack with a liveness model)."""

    enabled: bool = Field(False, description="Require a live face for a grant")
    threshold: float | None = Field(
        None, ge=0, le=1, description="Fused live score a track needs (mean of its last `frames` scores); "
        "None = the pack's liveness.threshold")
    frames: int = Field(3, ge=1, le=1000, description="Live frames a track needs before a grant (1…decision.n)")


class InferenceConfig(_Section):
    """ONNX Runtime settings of the inference stage."""

    providers: list[str] | None = Field(
        None, max_length=16, description="Execution providers in order, e.g. [CUDAExecutionProvider, "
        "CPUExecutionProvider]; "
        "None = CUDA when available, then CPU")
    threads: int | None = Field(
        None, ge=1, le=MAX_THREADS, description="Intra-op threads per session, 1 … the CPUs the daemon may use "
        "(checked at start: more threads than CPUs only slow ONNX Runtime down); None = half the CPUs (the rest "
        "decode video)")
    max_batch: int = Field(8, ge=1, le=64, description="Most frames (one per camera) run through detection at once "
                           "(1…64, as many as there may be cameras)")


class ServiceConfig(_Section):
    """Process-level settings of `facegate run`."""

    state_dir: str | None = Field(
        None, min_length=1, max_length=_PATH_MAX, description="Folder for the default audit log and signing key; "
        "None = $STATE_DIRECTORY (systemd) or "
        "$XDG_STATE_HOME/facegate")
    ready_timeout_s: float = Field(
        30.0, ge=1, le=MAX_WAIT_S, description="Start-up fails when cameras are not delivering within this long (s, "
        "1…86400: opening a camera takes longer than a second's fraction)")
    stop_timeout_s: float = Field(3.0, gt=0, le=300, description="SIGTERM: threads get this long to finish (s, at "
                                  "most 300; systemd's own stop timeout is 90 s by default)")
    stdout_events: bool = Field(True, description="Also print every decision as one JSON line on stdout")
    failure_watchdog_s: float = Field(
        30.0, gt=0, le=86400, description="When every inference batch has failed for this long (s), the systemd "
        "watchdog is no longer fed, so systemd restarts the daemon (WatchdogSec later)")


class MetricsConfig(_Section):
    """The daemon's Prometheus endpoint (``runtime/metrics.py``): ``http://<listen>:<port>/metrics``."""

    enabled: bool = Field(True, description="Serve /metrics (a bind failure is logged; decisions go on)")
    listen: str = Field("127.0.0.1", min_length=1, description="Address to listen on; 0.0.0.0 exposes it to the "
                        "network (the metrics carry door and camera names, no faces)")
    port: int = Field(9108, ge=1, le=65535, description="TCP port (9108: facegate's default, not registered)")


class SnapshotsConfig(_Section):
    """Face crops of decisions kept for the operator console (``runtime/snapshots.py``). Off by default: a kept
    crop is a biometric image of everyone who walked past, enrolled or not (README: privacy)."""

    enabled: bool = Field(False, description="Keep the face crop of each decision as a JPEG named by its event_id")
    path: str | None = Field(None, description="Folder (created 0700); None = snapshots/ in the state directory")
    retention_hours: float = Field(24.0, gt=0, le=8760, description="Crops older than this (hours) are deleted")
    jpeg_quality: int = Field(90, ge=10, le=100, description="JPEG quality of the kept crops")


class AdminTlsConfig(_Section):
    """HTTPS for the operator console (PEM files; relative to the config file)."""

    cert: str = Field(..., description="Server certificate chain (PEM)")
    key: str = Field(..., description="Server private key (PEM)")


class AdminConfig(_Section):
    """The operator console, `facegate admin --config FILE` (a process of its own; see README "Operator console")."""

    listen: str = Field("127.0.0.1", min_length=1, description="Address to listen on; keep 127.0.0.1 behind a "
                        "reverse proxy, or give admin.tls to serve HTTPS on the network")
    port: int = Field(8470, ge=1, le=65535, description="TCP port of the console and its API")
    tls: AdminTlsConfig | None = Field(None, description="Serve HTTPS with this certificate; None = plain HTTP")
    tokens_file: str | None = Field(
        None, description="API tokens (hashed, mode 0600); None = admin-tokens.json in the state directory")
    cors_origins: list[str] = Field(
        default_factory=list, description="Browser origins (https://host:port) allowed to call the API from "
        "another page; [] = none (the console's own page needs none)")
    max_upload_bytes: int = Field(8 << 20, ge=1024, le=64 << 20, description="Largest enrolment photo (bytes)")
    max_upload_files: int = Field(10, ge=1, le=100, description="Most photos in one enrolment request")
    state_stale_s: float = Field(
        5.0, gt=0, description="The daemon counts as down when its state.json is older than this (s)")
    plain_http_on_network: bool = Field(
        False, description="Allow plain HTTP on an address other than loopback (tokens would cross the network "
        "unencrypted); without it such a listen address needs admin.tls")

    @field_validator("cors_origins")
    @classmethod
    def _origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", origin):
                raise ValueError(f"{origin!r} is not an origin like https://console.example.org:8443 (no path, "
                                 "no wildcard)")
        return value


class Config(_Section):
    """The whole configuration. Every section has defaults; an empty file is valid (then give --camera)."""

    cameras: list[CameraConfig] = Field(default_factory=list, max_length=64, description="Cameras to read (at most "
                                        "64: one reader thread and one decoder each)")
    pack: str = Field("default", min_length=1, max_length=_PATH_MAX,
                      description="Model pack name (models/NAME.yaml) or path to a pack manifest")
    decision: DecisionConfig = Field(default_factory=DecisionConfig, description="Voting and thresholds")
    doors: list[DoorConfig] = Field(default_factory=list, max_length=1000, description="Doors and their access "
                                    "rules")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection")
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig,
                                               description="Home Assistant MQTT discovery")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Audit log")
    signing: SigningConfig = Field(default_factory=SigningConfig, description="Event signing key")
    gallery: GalleryConfig = Field(default_factory=GalleryConfig, description="Gallery location")
    liveness: LivenessConfig = Field(default_factory=LivenessConfig, description="Presentation-attack detection")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="ONNX Runtime")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Process settings")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus endpoint")
    snapshots: SnapshotsConfig = Field(default_factory=SnapshotsConfig, description="Face crops of decisions")
    admin: AdminConfig = Field(default_factory=AdminConfig, description="Operator console (`facegate admin`)")

    @model_validator(mode="after")
    def _references(self) -> Config:
        # each message starts with the key path it is about ("cameras[0].door: …"): config_file reports it there
        if self.liveness.enabled and self.liveness.frames > self.decision.n:
            raise ValueError(f"liveness.frames: frames ({self.liveness.frames}) must be ≤ decision.n "
                             f"({self.decision.n}): the live scores are fused over the voting window")
        for what, ids in (("cameras", [c.id for c in self.cameras]), ("doors", [d.id for d in self.doors])):
            if problem := duplicate_ids_problem(what, ids):
                raise ValueError(f"{what}: {problem}")
        if self.mqtt.host is None:
            needs = [f"doors[{i}].anti_passback_confirmed" for i, d in enumerate(self.doors)
                     if d.anti_passback_confirmed]
            needs += ["homeassistant.enabled"] if self.homeassistant.enabled else []
            if needs:
                raise ValueError(f"{needs[0]}: needs a broker (the passage events and announcements travel over "
                                 "MQTT): set mqtt.host")
        for i, d in enumerate(self.doors):
            if d.anti_passback_confirmed and d.passage_public_key is None:
                raise ValueError(f"doors[{i}].anti_passback_confirmed: counts only passages signed by the door "
                                 "agent, so it needs passage_public_key: generate the agent's key pair (facegate keys "
                                 f"generate --out DIR --name door-{d.id}), give the agent the .key "
                                 "(inputs.passage_signing_key) and this door the .pub")
        doors = {d.id: d for d in self.doors}
        cams = {c.id for c in self.cameras}
        for i, d in enumerate(self.doors):
            for cid in d.cameras:
                if cid not in cams:
                    raise ValueError(f"doors[{i}].cameras: door {d.id!r} lists camera {cid!r}, which is not in "
                                     "cameras")
        for i, c in enumerate(self.cameras):
            if c.door is not None and doors and c.door not in doors:
                raise ValueError(f"cameras[{i}].door: camera {c.id!r} watches door {c.door!r}, which is not in "
                                 "doors")
            listed = [d.id for d in self.doors if c.id in d.cameras]
            if len(listed) > 1:
                raise ValueError(f"doors: camera {c.id!r} is listed by several doors ({', '.join(listed)})")
            if listed and c.door is not None and listed[0] != c.door:
                raise ValueError(f"cameras[{i}].door: camera {c.id!r} says door {c.door!r} but door {listed[0]!r} "
                                 "lists it")
        return self
