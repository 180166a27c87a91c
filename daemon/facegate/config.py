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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
#: Weekday keys of schedule windows, in ``datetime.weekday()`` order.
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
#: A topic segment must not contain MQTT wildcards or separators (MQTT 3.1.1 §4.7).
_TOPIC_PREFIX = r"^[^#+\x00]+$"


class _Section(BaseModel):
    # inf/nan are never meant: .inf as a timeout overflows threading waits, nan compares false everywhere
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CameraConfig(_Section):
    """One camera: exactly one of ``url``, ``usb``, ``device`` or ``file``."""

    id: str = Field(..., pattern=_ID, description="Camera id used in events, logs and topics (letters, digits, _.-)")
    url: str | None = Field(None, description="Stream URL, e.g. rtsp://user:pass@10.0.0.5:554/stream1 (FFmpeg)")
    usb: int | None = Field(None, ge=0, description="USB/V4L2 camera index (0 = /dev/video0)")
    device: str | None = Field(None, description="Video device path, e.g. /dev/video2")
    file: str | None = Field(None, description="Video file (demo/tests); relative to the config file's folder")
    loop: bool = Field(False, description="file only: start again at the end instead of stopping the camera")
    start_s: float = Field(0.0, ge=0, description="file only: start playing at this position (s)")
    stop_s: float | None = Field(None, gt=0, description="file only: treat this position (s) as the end of the file")
    realtime: bool = Field(True, description="file only: play at the file's own fps (False: as fast as decoded)")
    fps_limit: float | None = Field(None, gt=0, description="Deliver at most this many frames per second (None: all)")
    door: str | None = Field(None, pattern=_ID, description="Id of the door this camera watches (see doors)")
    open_timeout_s: float = Field(10.0, gt=0, description="Give up opening the source after this many seconds")
    read_timeout_s: float = Field(5.0, gt=0, description="A single read that takes longer counts as a failure")
    stall_timeout_s: float = Field(
        8.0, gt=0, description="Watchdog: rebuild the capture when no frame arrived for this long (an OpenCV read "
        "can block forever after an RTSP source comes back)")
    backoff_initial_s: float = Field(0.5, gt=0, description="First reconnect delay; doubled after each failure")
    backoff_max_s: float = Field(30.0, gt=0, description="Longest reconnect delay (±20 % jitter is added)")

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

    threshold: float | None = Field(
        None, description="Comparison-score threshold (pack metric: distance ≤ t or similarity ≥ t); "
        "None = derived from false_accept_rate when that is set, else the pack's measured operating point")
    false_accept_rate: float | None = Field(
        None, gt=0, lt=1, description="Goal: the chance per attempt that a stranger is granted as someone (e.g. "
        "1.0e-4); the threshold is derived from the pack's calibration, the live gallery size and the k-of-n vote "
        "(facegate/scoring.py). Not together with threshold")
    k: int = Field(3, ge=1, description="Frames of the last n that must match the same identity for a decision")
    n: int = Field(5, ge=1, description="Voting window in frames per track")
    margin: float = Field(
        0.05, ge=0, description="Required gap between the best and the second-best identity's score (same units "
        "as the threshold)")
    unknown_after_s: float = Field(
        2.0, gt=0, description="A track this old (seconds) without a grant or deny is unknown (so is one with n "
        "fresh frames and no identity reaching k)")
    max_frame_age_s: float = Field(
        1.0, gt=0, description="Frames older than this (capture to decision, seconds) are dropped, never decided on")
    grant_ttl_s: float = Field(2.0, gt=0, description="A grant's expires_at is its decided_at plus this (seconds)")
    repeat_after_s: float = Field(
        30.0, ge=0, description="The same decision is not repeated for one track within this many seconds")
    track_min_affinity: float = Field(
        0.3, gt=0, le=1, description="Minimum box-IoU/landmark affinity for a face to continue a track")
    track_max_age_s: float = Field(1.0, gt=0, description="A track without a detection for this long ends")
    min_face_px: int = Field(
        40, ge=0, description="Faces narrower than this (px) are ignored: not embedded, never decided on")

    @model_validator(mode="after")
    def _k_le_n(self) -> DecisionConfig:
        if problem := k_le_n_problem(self.k, self.n):
            raise ValueError(problem)
        if problem := threshold_or_rate_problem(self.threshold, self.false_accept_rate):
            raise ValueError(problem)
        return self


class TimeWindow(_Section):
    """A weekly opening window in the door's time zone: on ``days``, from ``start`` to ``end`` (end exclusive).
    An ``end`` before ``start`` runs across midnight into the next day (a night shift, 22:00–06:00)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        ..., min_length=1, description="Weekdays (mon…sun) this window starts on")
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

    timezone: str = Field(..., description="IANA time zone name, e.g. Europe/Berlin (checked against tzdata)")
    windows: list[TimeWindow] = Field(..., min_length=1, description="Opening windows; a grant needs one to match")

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
        default_factory=list, description="Camera ids watching this door (or set door: on the camera)")
    allowed_groups: list[str] | None = Field(
        None, description="Gallery groups allowed through; null = every enrolled identity, [] = nobody")
    schedule: ScheduleConfig | None = Field(None, description="Weekly opening schedule; None = at any time")
    cooldown_s: float = Field(
        5.0, ge=0, description="After a grant, the same person at this door is not granted again for this long")
    anti_passback: bool = Field(
        False, description="Refuse a second grant for the same person at this door until anti_passback_s passed")
    anti_passback_s: float = Field(
        600.0, gt=0, description="Anti-passback window in seconds (only with anti_passback: true)")
    exit: bool = Field(False, description="An exit door: a grant here clears the person's anti-passback state")


class TlsConfig(_Section):
    """TLS to the broker; paths relative to the config file."""

    ca: str | None = Field(None, description="CA bundle that signed the broker's certificate (None: system CAs)")
    cert: str | None = Field(None, description="Client certificate (PEM) for mutual TLS")
    key: str | None = Field(None, description="Client private key (PEM) for mutual TLS")
    insecure: bool = Field(False, description="Skip host-name verification (testing only)")

    @model_validator(mode="after")
    def _pair(self) -> TlsConfig:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: give both or neither")
        return self


class MqttConfig(_Section):
    """The broker the door controllers listen on. ``host: null`` runs without a broker (no door can be driven)."""

    host: str | None = Field(None, description="Broker host name or IP; None = no broker (audit log/stdout only)")
    port: int = Field(1883, ge=1, le=65535, description="Broker port (1883 plain, 8883 TLS)")
    tls: TlsConfig | None = Field(None, description="TLS settings; None = plain TCP")
    username: str | None = Field(None, description="User name for the broker")
    password_file: str | None = Field(None, description="File holding the password (first line)")
    password_env: str | None = Field(None, description="Environment variable holding the password")
    client_id: str = Field("facegate", min_length=1, max_length=64, description="MQTT client id")
    topic_prefix: str = Field("facegate", pattern=_TOPIC_PREFIX, description="Topics are <prefix>/<door>/event and "
                              "<prefix>/status")
    qos: Literal[1, 2] = Field(1, description="QoS of events and status (≥1: door events must not be lost silently)")
    keepalive_s: int = Field(30, ge=5, description="MQTT keep-alive; the broker publishes the last will after 1.5×")
    connect_timeout_s: float = Field(10.0, gt=0, description="Start-up waits this long for the first connection")
    queue_max: int = Field(1000, ge=1, description="Events kept while the broker is away (oldest dropped first)")

    @model_validator(mode="after")
    def _password(self) -> MqttConfig:
        if self.password_file is not None and self.password_env is not None:
            raise ValueError("give password_file or password_env, not both")
        if (self.password_file or self.password_env) and not self.username:
            raise ValueError("a password needs a username")
        return self


class AuditConfig(_Section):
    """The append-only audit log (JSON lines, fsync'd before any publish)."""

    path: str | None = Field(None, description="Audit log file; None = audit.jsonl in the state directory")


class SigningConfig(_Section):
    """HMAC-SHA256 key for event signatures."""

    key_file: str | None = Field(
        None, description="File with the secret key bytes (≥16 bytes); None = signing.key in the state directory, "
        "created with 32 random bytes on first run")


class GalleryConfig(_Section):
    """Where the enrolled identities live."""

    path: str | None = Field(
        None, description="Gallery folder; None = the one `facegate enroll` uses by default ($FACEGATE_GALLERY, else "
        "$XDG_DATA_HOME/facegate/gallery)")
    refresh_s: float = Field(
        2.0, ge=0, description="The running daemon re-reads the gallery this often (seconds), so an enrolment or "
        "an erasure (`facegate gallery remove`) takes effect within about this long; 0 = only on SIGHUP")


class LivenessConfig(_Section):
    """Presentation-attack detection (needs a pack with a liveness model)."""

    enabled: bool = Field(False, description="Require a live face for a grant")
    threshold: float | None = Field(
        None, ge=0, le=1, description="Fused live score a track needs (mean of its last `frames` scores); "
        "None = the pack's liveness.threshold")
    frames: int = Field(3, ge=1, description="Live frames a track needs before a grant")


class InferenceConfig(_Section):
    """ONNX Runtime settings of the inference stage."""

    providers: list[str] | None = Field(
        None, description="Execution providers in order, e.g. [CUDAExecutionProvider, CPUExecutionProvider]; "
        "None = CUDA when available, then CPU")
    threads: int | None = Field(
        None, ge=1, le=256, description="Intra-op threads per session; None = half the CPUs (the rest decode video)")
    max_batch: int = Field(8, ge=1, description="Most frames (one per camera) run through detection at once")


class ServiceConfig(_Section):
    """Process-level settings of `facegate run`."""

    state_dir: str | None = Field(
        None, description="Folder for the default audit log and signing key; None = $STATE_DIRECTORY (systemd) or "
        "$XDG_STATE_HOME/facegate")
    ready_timeout_s: float = Field(
        30.0, gt=0, description="Start-up fails when cameras are not delivering within this long")
    stop_timeout_s: float = Field(3.0, gt=0, description="SIGTERM: threads get this long to finish")
    stdout_events: bool = Field(True, description="Also print every decision as one JSON line on stdout")


class Config(_Section):
    """The whole configuration. Every section has defaults; an empty file is valid (then give --camera)."""

    cameras: list[CameraConfig] = Field(default_factory=list, description="Cameras to read")
    pack: str = Field("default", description="Model pack name (models/NAME.yaml) or path to a pack manifest")
    decision: DecisionConfig = Field(default_factory=DecisionConfig, description="Voting and thresholds")
    doors: list[DoorConfig] = Field(default_factory=list, description="Doors and their access rules")
    mqtt: MqttConfig = Field(default_factory=MqttConfig, description="Broker connection")
    audit: AuditConfig = Field(default_factory=AuditConfig, description="Audit log")
    signing: SigningConfig = Field(default_factory=SigningConfig, description="Event signing key")
    gallery: GalleryConfig = Field(default_factory=GalleryConfig, description="Gallery location")
    liveness: LivenessConfig = Field(default_factory=LivenessConfig, description="Presentation-attack detection")
    inference: InferenceConfig = Field(default_factory=InferenceConfig, description="ONNX Runtime")
    service: ServiceConfig = Field(default_factory=ServiceConfig, description="Process settings")

    @model_validator(mode="after")
    def _references(self) -> Config:
        if self.liveness.enabled and self.liveness.frames > self.decision.n:
            raise ValueError(f"liveness: frames ({self.liveness.frames}) must be ≤ decision.n ({self.decision.n}): "
                             "the live scores are fused over the voting window")
        for what, ids in (("cameras", [c.id for c in self.cameras]), ("doors", [d.id for d in self.doors])):
            if problem := duplicate_ids_problem(what, ids):
                raise ValueError(f"{what}: {problem}")
        doors = {d.id: d for d in self.doors}
        cams = {c.id for c in self.cameras}
        for d in self.doors:
            for cid in d.cameras:
                if cid not in cams:
                    raise ValueError(f"doors: door {d.id!r} lists camera {cid!r}, which is not in cameras")
        for c in self.cameras:
            if c.door is not None and doors and c.door not in doors:
                raise ValueError(f"cameras: camera {c.id!r} watches door {c.door!r}, which is not in doors")
            listed = [d.id for d in self.doors if c.id in d.cameras]
            if len(listed) > 1:
                raise ValueError(f"doors: camera {c.id!r} is listed by several doors ({', '.join(listed)})")
            if listed and c.door is not None and listed[0] != c.door:
                raise ValueError(f"cameras: camera {c.id!r} says door {c.door!r} but door {listed[0]!r} lists it")
        return self


def threshold_or_rate_problem(threshold: float | None, false_accept_rate: float | None) -> str | None:
    """``decision.threshold`` and ``decision.false_accept_rate`` both set (they are two ways to choose one threshold:
    ``facegate/scoring.py`` ``Scorer.resolve``)."""
    if threshold is not None and false_accept_rate is not None:
        return ("set either threshold (a fixed comparison score) or false_accept_rate (a goal the threshold is "
                "derived from), not both")
    return None


def k_le_n_problem(k: int, n: int) -> str | None:
    """The voting rule's one check: k of the last n frames needs k ≤ n."""
    return f"k ({k}) must be ≤ n ({n})" if k > n else None


def duplicate_ids_problem(what: str, ids: list[str]) -> str | None:
    """Camera and door ids name topics, events and log lines: each must be unique."""
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    return f"duplicate id(s) {', '.join(dupes)}" if dupes else None


def tz_problem(name: str) -> str | None:
    """Why ``name`` is not a time zone of this machine's tz database (reads it: an environment check), else None."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return f"unknown time zone {name!r} (not in the tz database)"
    return None
