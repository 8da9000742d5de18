"""The broker's one typed settings object: defaults < TOML file < MWL_* environment."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from mwl.errors import SettingsError
from mwl.timezones import site_zone

ENV_PREFIX = "MWL_"


@dataclass(frozen=True)
class DicomAeProfile:
    """Worklist policy for one calling AE (a ``[[dicom.ae_profiles]]`` table).

    ``host`` (optional) restricts the profile to one peer address. Empty values
    fall back to the broker-wide settings (``dicom_response_charset``,
    ``dicom_max_matches``).
    """

    ae_title: str
    host: str = ""
    # Specific Character Set of responses, e.g. "ISO_IR 100" for a Latin-1 modality.
    response_charset: str = ""
    # Use the calling AE title as Scheduled Station AE Title when the query names none.
    calling_ae_as_station: bool = False
    # A query without SPS Start Date gets today .. today + (days - 1); 0 = no window.
    date_window_days: int = 0
    # Step statuses shown when the query names none (default: all but the hidden ones).
    visible_statuses: tuple[str, ...] = ()
    # At most this many matches (0 = dicom_max_matches).
    max_matches: int = 0
    # Only associations over DICOM TLS are accepted from this AE (dicom_tls_port).
    require_tls: bool = False
    # Keys matched only on request (Pregnancy Status) that this AE's queries match on.
    match_keys: tuple[str, ...] = ()
    # Pending 0xFF01 when a key of the query was ignored (PS3.4 K.4.1.1.4); false:
    # 0xFF00, for SCUs that take 0xFF01 for a final status (dcmjs-dimse 0.3.3).
    warn_ignored_keys: bool = True
    # Responses carry Timezone Offset From UTC (0008,0201): the site's offset at each
    # step's start (PS3.3 C.12.1.1.8).
    timezone_offset: bool = False
    # What the device accepts (mwl.worklist.device; 0 / empty: no limit): the longest
    # value of given keys ({PatientName = 32}), of a PN component, of LO and SH
    # values; characters it refuses; keys it needs a value for (StudyInstanceUID).
    max_length: tuple[tuple[str, int], ...] = ()
    max_pn_component_length: int = 0
    max_lo_length: int = 0
    max_sh_length: int = 0
    forbidden_characters: str = ""
    required_keys: tuple[str, ...] = ()


def _keyword_lengths(value: Any) -> tuple[tuple[str, int], ...]:
    """``{PatientName = 32}`` (or its pairs) as sorted (keyword, length) pairs."""
    pairs = value.items() if isinstance(value, Mapping) else value
    out = []
    for keyword, length in pairs:
        if int(length) < 1:
            raise ValueError(f"max_length of {keyword} must be positive")
        out.append((str(keyword), int(length)))
    return tuple(sorted(out))


def _dicom_ae_profiles(value: Any) -> tuple[DicomAeProfile, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of tables")
    profiles = []
    for row in value:
        if not isinstance(row, Mapping):
            raise ValueError("each profile is a table")
        unknown = set(row) - {f.name for f in fields(DicomAeProfile)}
        if unknown:
            raise ValueError(f"unknown profile key(s) {sorted(unknown)}")
        title = str(row["ae_title"])
        if not title.strip() or len(title) > 16:
            raise ValueError(f"{title!r} is not an AE title")
        statuses = tuple(str(s).upper() for s in row.get("visible_statuses", ()))
        profiles.append(
            DicomAeProfile(
                ae_title=title,
                host=str(row.get("host", "")),
                response_charset=str(row.get("response_charset", "")),
                calling_ae_as_station=bool(row.get("calling_ae_as_station", False)),
                date_window_days=int(row.get("date_window_days", 0)),
                visible_statuses=statuses,
                max_matches=int(row.get("max_matches", 0)),
                require_tls=bool(row.get("require_tls", False)),
                match_keys=tuple(str(k) for k in row.get("match_keys", ())),
                warn_ignored_keys=bool(row.get("warn_ignored_keys", True)),
                timezone_offset=bool(row.get("timezone_offset", False)),
                max_length=_keyword_lengths(row.get("max_length", {})),
                max_pn_component_length=int(row.get("max_pn_component_length", 0)),
                max_lo_length=int(row.get("max_lo_length", 0)),
                max_sh_length=int(row.get("max_sh_length", 0)),
                forbidden_characters=str(row.get("forbidden_characters", "")),
                required_keys=tuple(str(k) for k in row.get("required_keys", ())),
            )
        )
    return tuple(profiles)


@dataclass(frozen=True)
class Hl7StationRule:
    """Routes scheduled steps without a station (no IPC-9) to one: ``[[hl7.station_rules]]``.

    Every condition given must match (compared case-insensitively); empty means any.
    The first matching rule wins.
    """

    station_ae_title: str
    station_name: str = ""
    modality: str = ""
    procedure_code: str = ""
    location: str = ""

    def matches(self, modality: str, procedure_code: str, location: str) -> bool:
        """True when each condition of the rule is empty or equal to the value."""
        return all(
            not want or want.upper() == value.upper()
            for want, value in (
                (self.modality, modality),
                (self.procedure_code, procedure_code),
                (self.location, location),
            )
        )


def _hl7_modality_map(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError("expected a table of sent value = DICOM modality")
    pairs = tuple((str(k).strip().upper(), str(v).strip().upper()) for k, v in value.items())
    for sent, modality in pairs:
        if not modality or len(modality) > 16 or not modality.replace("_", "").isalnum():
            raise ValueError(f"{modality!r} (for {sent!r}) is not a DICOM modality")
    return pairs


def _hl7_order_status(value: Any) -> tuple[tuple[str, str, str], ...]:
    from mwl.domain import SpsStatus

    if not isinstance(value, Mapping):
        raise ValueError('expected a table of "ORC1_ORC5" = "STATUS"')
    rows = []
    for key, status in value.items():
        control, sep, order_status = str(key).upper().partition("_")
        if not sep or not control:
            raise ValueError(f"{key!r} is not ORC-1_ORC-5 (e.g. NW_SC, XO_)")
        status = str(status).strip().upper()
        if status and status not in SpsStatus.__members__:
            raise ValueError(f"{status!r} is not a step status")
        rows.append((control, order_status, status))
    return tuple(rows)


def _hl7_accepted_senders(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError('expected a list of "APPLICATION|FACILITY" patterns')
    patterns = tuple(str(v).strip() for v in value)
    for pattern in patterns:
        if not pattern or pattern.count("|") > 1:
            raise ValueError(f'{pattern!r} is not an "APPLICATION|FACILITY" pattern')
    return patterns


def _hl7_allowed_peers(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list):
        raise ValueError('expected a list of IP addresses or networks ("10.1.2.0/24")')
    networks = []
    for item in value:
        try:
            networks.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(networks)


def _weekday_hours(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) != 7:
        raise ValueError('expected 7 windows, Monday to Sunday, e.g. "07-19" or "" (not watched)')
    windows = []
    for item in value:
        text = str(item).strip()
        if text:
            start, sep, end = text.partition("-")
            if not (sep and start.isdigit() and end.isdigit() and 0 <= int(start) < int(end) <= 24):
                raise ValueError(f"{text!r} is not a window of hours such as 07-19 (0-24)")
            text = f"{int(start):02d}-{int(end):02d}"
        windows.append(text)
    return tuple(windows)


def _mail_addresses(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) and "@" in v for v in value):
        raise ValueError('expected a list of e-mail addresses ("pacs-admin@example.org")')
    return tuple(v.strip() for v in value)


def _hl7_station_rules(value: Any) -> tuple[Hl7StationRule, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of tables")
    rules = []
    allowed = {f.name for f in fields(Hl7StationRule)}
    for row in value:
        if not isinstance(row, Mapping):
            raise ValueError("each rule is a table")
        unknown = set(row) - allowed
        if unknown:
            raise ValueError(f"unknown rule key(s) {sorted(unknown)}")
        title = str(row["station_ae_title"])
        if not title.strip() or len(title) > 16:
            raise ValueError(f"{title!r} is not an AE title")
        rules.append(Hl7StationRule(**{k: str(v) for k, v in row.items()}))
    return tuple(rules)


def _mpps_step_status(value: Any) -> tuple[tuple[str, str], ...]:
    from mwl.domain import MppsStatus, SpsStatus

    if not isinstance(value, Mapping):
        raise ValueError('expected a table of "MPPS STATUS" = "STEP STATUS"')
    rows = []
    for key, status in value.items():
        mpps = str(key).strip().upper().replace("_", " ")
        if mpps not in {s.value for s in MppsStatus}:
            raise ValueError(f"{key!r} is not IN PROGRESS, COMPLETED or DISCONTINUED")
        status = str(status).strip().upper()
        if status and status not in SpsStatus.__members__:
            raise ValueError(f"{status!r} is not a step status")
        rows.append((mpps, status))
    return tuple(rows)


def _retention_days(value: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, Mapping):
        raise ValueError('expected a table of "STATUS" = days')
    rows = []
    for key, days in value.items():
        if isinstance(days, bool) or not isinstance(days, int | float | str):
            raise ValueError(f"{days!r} (for {key!r}) is not a number of days")
        number = float(days)
        if number < 0:
            raise ValueError(f"{key!r}: days must not be negative")
        rows.append((str(key).strip().upper().replace("_", " "), number))
    return tuple(rows)


def _web_trusted_proxies(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError("expected a list of IP addresses or networks")
    proxies = []
    for item in value:
        try:
            proxies.append(str(ipaddress.ip_network(str(item).strip(), strict=False)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(proxies)


# The admin page's roles (mwl.admin.users.Role), named here so the settings stay
# free of the core's imports.
_ROLES = ("viewer", "editor", "admin")


def _role_map(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, Mapping):
        raise ValueError('expected a table of "claim value or group" = "role"')
    rows = []
    for key, role in value.items():
        if not str(key).strip():
            raise ValueError("an empty claim value or group")
        if role not in _ROLES:
            raise ValueError(f"{role!r} (for {key!r}) is not a role ({', '.join(_ROLES)})")
        rows.append((str(key).strip(), str(role)))
    return tuple(rows)


@dataclass(frozen=True)
class Settings:
    """Every setting of the broker.

    Field names are public: ``hl7_port`` is read from ``MWL_HL7_PORT`` and from
    ``port`` in the ``[hl7]`` table of the TOML file (or a flat ``hl7_port``).
    """

    database_url: str = "sqlite:///mwl.db"
    # Singleton leases on PostgreSQL (RIS and audit senders): TCP keepalive of the
    # lease connection (idle and probe interval, 3 probes; 0: the kernel's), so a cut
    # off peer is noticed; and a lifetime after which the server ends a lease whose
    # holder stopped renewing it (renewed every third of it; 0: held while the
    # connection lives). docs/admin-guide.md, "Several brokers".
    lease_keepalive_seconds: float = 10.0
    lease_lifetime_seconds: float = 30.0
    bind_address: str = "0.0.0.0"
    # TCP balancers (addresses or networks) in front of the MLLP and DICOM ports that
    # send the PROXY protocol header (HAProxy send-proxy-v2): their connections must
    # start with one, and the caller it names is the peer. Empty: off.
    proxy_protocol_from: tuple[str, ...] = field(
        default=(), metadata={"convert": _hl7_allowed_peers}
    )
    hl7_port: int = 2575
    dicom_port: int = 11112
    dicom_ae_title: str = "MWL"
    web_port: int = 8080
    # Signs session cookies; when empty, a random key is made per process (sessions
    # then end with a restart, which is safe but tiresome: set it in production).
    web_secret_key: str = field(default="", repr=False)
    # Cookies marked Secure: set when a reverse proxy terminates TLS in front of the
    # page (with web_tls_cert set they are Secure anyway).
    web_secure_cookies: bool = False
    # HTTPS on web_port (TLS 1.2+, BCP 195) while both are set: PEM certificate chain
    # and key, reloaded when the files change. Then HSTS is sent and cookies are Secure.
    web_tls_cert: str = ""
    web_tls_key: str = ""
    # Reverse proxies (addresses or networks) whose X-Forwarded-For/-Proto/-Host/-Port
    # are believed; from anyone else these headers are ignored. Empty: no proxy.
    web_trusted_proxies: tuple[str, ...] = field(
        default=(), metadata={"convert": _web_trusted_proxies}
    )
    # A login ends after this long without a request, and this long after it began.
    web_session_idle_minutes: float = 30.0
    web_session_lifetime_hours: float = 12.0
    # Failed logins: free ones per user name (from any address) and per address (for
    # any names); then each attempt waits first_delay, doubled per failure, capped.
    web_login_failures_per_user: int = 5
    web_login_failures_per_address: int = 20
    web_login_first_delay_seconds: float = 5.0
    web_login_max_delay_seconds: float = 900.0
    # Single sign-on through OpenID Connect (authorization code with PKCE), on while
    # oidc_issuer is set (docs/admin-guide.md, "Single sign-on"). The role is the
    # highest one oidc_role_map gives to a value of the oidc_role_claim claim (a
    # dotted path, e.g. realm_access.roles); without one the login is refused.
    oidc_issuer: str = ""
    oidc_client_id: str = ""
    oidc_client_secret: str = field(default="", repr=False)
    oidc_scopes: str = "openid profile email"
    oidc_username_claim: str = "preferred_username"
    oidc_role_claim: str = "groups"
    oidc_role_map: tuple[tuple[str, str], ...] = field(default=(), metadata={"convert": _role_map})
    # CA certificates (PEM) that the provider's HTTPS certificate is checked against;
    # empty: the system's.
    oidc_ca: str = ""
    # LDAP / Active Directory: the login form binds as the user when the name is no
    # local account. On while ldap_url is set. The DN template gets {username}
    # (escaped), e.g. "uid={username},ou=people,dc=example,dc=org" or
    # "{username}@corp.example.org" (AD). The groups are searched under
    # ldap_group_search_base with the filter ({user_dn}, escaped), and the user's
    # own memberOf is read when ldap_user_search_base is set.
    ldap_url: str = ""
    ldap_start_tls: bool = False
    ldap_ca: str = ""
    ldap_user_dn_template: str = ""
    ldap_user_search_base: str = ""
    ldap_user_filter: str = "(uid={username})"
    ldap_group_search_base: str = ""
    ldap_group_filter: str = "(|(member={user_dn})(uniqueMember={user_dn}))"
    ldap_group_role_map: tuple[tuple[str, str], ...] = field(
        default=(), metadata={"convert": _role_map}
    )
    ldap_timeout_seconds: float = 10.0
    hl7_max_frame_bytes: int = 1_048_576
    hl7_idle_timeout_seconds: float = 300.0
    # Seconds from the first byte of a frame to its end, however often bytes come (the
    # idle timeout restarts with each byte); also bounds a TLS handshake.
    hl7_frame_timeout_seconds: float = 30.0
    # Connections served at once, in all and from one IP address; beyond either a new
    # connection is closed at accept. A silent connection costs a thread but no CPU.
    hl7_max_connections: int = 200
    hl7_max_connections_per_address: int = 20
    # Peers that may connect (IP addresses or CIDR networks): ["10.1.2.0/24"]. Empty: any.
    # Others are closed at accept.
    hl7_allowed_peers: tuple[str, ...] = field(default=(), metadata={"convert": _hl7_allowed_peers})
    # MLLP over TLS (BCP 195, TLS 1.2 at least) on a port of its own, on while a
    # certificate is set: PEM chain and key; with a CA file, client certificates are
    # required and verified against it. The files are reloaded when they change.
    hl7_tls_port: int = 2576
    hl7_tls_cert: str = ""
    hl7_tls_key: str = ""
    hl7_tls_ca: str = ""
    # Charset of HL7 messages without MSH-18. Many RIS send Latin-1 unlabelled.
    hl7_default_charset: str = "8859/1"
    # HL7 mapping choices (docs/hl7-interface.md). Sent modality -> DICOM modality
    # (OBR-24, IPC-5), as a table: {MRI = "MR"}.
    hl7_modality_map: tuple[tuple[str, str], ...] = field(
        default=(("MRI", "MR"),), metadata={"convert": _hl7_modality_map}
    )
    # Scheduled Protocol Code from OBR-4.4/.5/.6 (4, dcm4chee's default) or OBR-4.1/.2/.3 (1).
    hl7_protocol_code_component: int = 4
    # ORC-1_ORC-5 -> step status, over the defaults of mwl.orders.apply:
    # {XO_ = "SCHEDULED"}; "" drops a pair.
    hl7_order_status: tuple[tuple[str, str, str], ...] = field(
        default=(), metadata={"convert": _hl7_order_status}
    )
    # Scheduled Station AE Title from ORC-18 when the order has no IPC-9 (opt-in, as
    # dcm4chee's hl7ScheduledStationAETInOrder=ORC_18).
    hl7_station_from_orc18: bool = False
    # Station for steps the order gives none (no IPC-9): first matching rule.
    hl7_station_rules: tuple[Hl7StationRule, ...] = field(
        default=(), metadata={"convert": _hl7_station_rules}
    )
    # Senders accepted (MSH-3|MSH-4 namespace IDs, `*` any run): ["RIS|HOSPITAL",
    # "PACS*|*"]. Empty: any sender. Others get AR 103 at MSH-3, as dcm4che answers.
    hl7_accepted_senders: tuple[str, ...] = field(
        default=(), metadata={"convert": _hl7_accepted_senders}
    )
    # A new step without TQ1-7 / ORC-7.4 / OBR-27.4: "now" (dcm4chee) or "reject" (AE 101).
    hl7_missing_start: str = "now"
    # The site's time zone (IANA, e.g. "Europe/Zurich"); "" = the system's. Scheduled
    # times are kept as its wall-clock time; HL7 and DICOM offsets are converted to it.
    timezone: str = ""
    # Identifiers and message bodies are patient data: logged only when asked, at DEBUG.
    log_phi: bool = False
    log_level: str = "INFO"
    # "text" (one readable line) or "json" (one JSON object a line, mwl.logs).
    log_format: str = "text"
    # Worklist C-FIND: response Specific Character Set, match limit (0 = none),
    # per-calling-AE profiles, and whether only the AEs listed there may associate.
    dicom_response_charset: str = "ISO_IR 192"
    dicom_max_matches: int = 0
    dicom_ae_profiles: tuple[DicomAeProfile, ...] = field(
        default=(), metadata={"convert": _dicom_ae_profiles}
    )
    dicom_restrict_calling_ae: bool = False
    # Associations served at once, in all, from one IP address and of one calling AE
    # title (self-declared, so the per-address limit is what stops a single host);
    # beyond either: A-ASSOCIATE-RJ transient, local limit exceeded. An idle
    # association costs no CPU, so the total is set for a department's modalities
    # that reconnect at once, with room to spare.
    dicom_max_associations: int = 500
    dicom_max_associations_per_address: int = 50
    dicom_max_associations_per_ae: int = 20
    # Seconds: for the A-ASSOCIATE-RQ (and TLS handshake) after connecting; for the
    # rest of a request once its first fragment came; of silence on an established
    # association (and for a peer that stops reading an answer) before it is aborted.
    dicom_acse_timeout_seconds: float = 30.0
    dicom_dimse_timeout_seconds: float = 30.0
    dicom_network_timeout_seconds: float = 60.0
    # Maximum Length advertised in the A-ASSOCIATE-AC; a longer P-DATA-TF aborts.
    dicom_max_pdu_bytes: int = 16384
    # A request's data set (Identifier, MPPS attributes), received and once inflated.
    dicom_max_identifier_bytes: int = 65536
    # DICOM TLS (PS3.15 B.12, BCP 195) on a port of its own, on while a certificate is
    # set: PEM certificate chain and key; with a CA file, client certificates are
    # required and verified against it. 2762 is the IANA port of DICOM over TLS.
    dicom_tls_port: int = 2762
    dicom_tls_cert: str = ""
    dicom_tls_key: str = ""
    dicom_tls_ca: str = ""
    # With TLS on: serve DICOM over TLS only (no plain dicom_port).
    dicom_tls_only: bool = False
    # MPPS SCP (docs/conformance-statement.md): Performed Procedure Step Status -> status
    # of the linked scheduled steps, as a table {"IN PROGRESS" = "STARTED"}; "" leaves
    # the steps as they are.
    mpps_step_status: tuple[tuple[str, str], ...] = field(
        default=(
            ("IN PROGRESS", "STARTED"),
            ("COMPLETED", "COMPLETED"),
            ("DISCONTINUED", "DISCONTINUED"),
        ),
        metadata={"convert": _mpps_step_status},
    )
    # Status messages back to the RIS (docs/hl7-interface.md, "Outbound"): off while
    # ris_host is empty. ORM^O01 or OMI^O23; MSH-3/4 are ours, MSH-5/6 the RIS's.
    ris_host: str = ""
    ris_port: int = 0
    ris_message_type: str = "ORM^O01"
    ris_sending_application: str = "MWL"
    ris_sending_facility: str = ""
    ris_receiving_application: str = ""
    ris_receiving_facility: str = ""
    ris_ack_timeout_seconds: float = 30.0
    # MLLP over TLS to the RIS while a CA file is set (the RIS certificate is verified
    # against it and ris_host); a client certificate and key when the RIS asks for one.
    ris_tls_ca: str = ""
    ris_tls_cert: str = ""
    ris_tls_key: str = ""
    # Retry delay after a failed attempt: initial, doubled per attempt up to the maximum.
    ris_retry_initial_seconds: float = 5.0
    ris_retry_max_seconds: float = 300.0
    # How often the sender looks for new messages.
    ris_poll_interval_seconds: float = 2.0
    # AE/AR answers after which a message is set aside (FAILED) so that the order's
    # later messages can go; 0 = retry for ever (the order's messages wait).
    ris_max_rejects: int = 0
    # Retention (mwl purge, and the housekeeping job of mwl serve): days after a step's
    # (or MPPS's) last change, per status; stale SCHEDULED steps after an idle time
    # (0 = never); delivered outbox messages; how often; rows deleted per transaction.
    retention_step_days: tuple[tuple[str, float], ...] = field(
        default=(("CANCELED", 1.0), ("COMPLETED", 7.0), ("DISCONTINUED", 7.0)),
        metadata={"convert": _retention_days},
    )
    retention_mpps_days: tuple[tuple[str, float], ...] = field(
        default=(("COMPLETED", 7.0), ("DISCONTINUED", 7.0)),
        metadata={"convert": _retention_days},
    )
    retention_scheduled_idle_days: float = 0.0
    retention_outbox_days: float = 30.0
    retention_interval_seconds: float = 3600.0
    retention_batch_size: int = 500
    # New orders entered on the admin page (mwl.orders.entry; docs/admin-guide.md):
    # accession number = prefix + YYMMDD + 4-digit counter (SH, 16 characters at most);
    # an unidentified patient gets the ID prefix + YYYYMMDD + counter and a name from
    # the template ({sex}: M, F, O or X; {date}: YYYYMMDD; {time}: HHMMSS; {id}).
    order_accession_prefix: str = "EM"
    order_unidentified_id_prefix: str = "TMP"
    order_unidentified_name: str = "UNKNOWN^{sex}^{time}"
    # Monitoring (docs/admin-guide.md, "Monitoring"): /metrics (Prometheus), /health and
    # /ready (probes) answer without a login, to clients in these networks only; with a
    # token set, /metrics also wants "Authorization: Bearer <token>". metrics_enabled
    # = false records nothing and answers /metrics with 404 (the probes stay).
    metrics_enabled: bool = True
    metrics_token: str = field(default="", repr=False)
    metrics_allowed_networks: tuple[str, ...] = field(
        default=(
            "127.0.0.0/8",
            "::1/128",
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "fc00::/7",
        ),
        metadata={"convert": _hl7_allowed_peers},
    )
    # ATNA audit (IHE ITI-20; docs/admin-guide.md "Audit (ATNA)"): DICOM audit messages
    # by syslog to an audit repository; off while audit_syslog_host is empty. tls
    # (RFC 5425, verified against audit_syslog_ca) or udp (RFC 5426, fire and forget);
    # tcp (plain RFC 5425 framing) only for labs. Cert and key for mutual TLS.
    audit_syslog_host: str = ""
    audit_syslog_port: int = 6514
    audit_syslog_transport: str = "tls"
    audit_syslog_ca: str = ""
    audit_syslog_cert: str = ""
    audit_syslog_key: str = ""
    # AuditSourceID and AuditEnterpriseSiteID of every message ("" = the host name).
    audit_source_id: str = ""
    audit_enterprise_site_id: str = ""
    # The watchdog (docs/admin-guide.md "Watchdog"): what nobody notices until a
    # radiographer calls. Every round (0 = off) it checks, on one broker per database:
    # the HL7 feed and each scanner that queried in the last 7 days silent for longer
    # than the minutes given, within the hours watched on that weekday (Monday first);
    # scanners whose last queries all failed; the RIS outbox backing up; today's steps
    # without a station AE; steps still SCHEDULED long after their start. 0 turns a
    # check off. Alerts show on the day page, in metrics, and go by e-mail and webhook.
    watchdog_interval_seconds: float = 60.0
    watchdog_hours: tuple[str, ...] = field(
        default=("07-19",) * 5 + ("", ""), metadata={"convert": _weekday_hours}
    )
    watchdog_hl7_silent_minutes: float = 60.0
    watchdog_scanner_silent_minutes: float = 120.0
    watchdog_scanner_failures: int = 3
    watchdog_outbox_minutes: float = 15.0
    watchdog_overdue_minutes: float = 240.0
    watchdog_missing_station: bool = True
    # Notifications: e-mail through this SMTP relay (STARTTLS when asked), and/or a JSON
    # POST to the webhook (with "Authorization: Bearer <token>" when a token is set).
    watchdog_smtp_host: str = ""
    watchdog_smtp_port: int = 25
    watchdog_smtp_starttls: bool = False
    watchdog_smtp_username: str = ""
    watchdog_smtp_password: str = field(default="", repr=False)
    watchdog_smtp_from: str = ""
    watchdog_smtp_to: tuple[str, ...] = field(default=(), metadata={"convert": _mail_addresses})
    watchdog_webhook_url: str = ""
    watchdog_webhook_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        _validate(self)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """The effective settings without secrets, for the start-up log."""
        values = dataclasses.asdict(self)
        values["web_secret_key"] = "(set)" if self.web_secret_key else "(random per process)"
        values["metrics_token"] = "(set)" if self.metrics_token else ""
        values["oidc_client_secret"] = "(set)" if self.oidc_client_secret else ""
        values["watchdog_smtp_password"] = "(set)" if self.watchdog_smtp_password else ""
        values["watchdog_webhook_token"] = "(set)" if self.watchdog_webhook_token else ""
        url = make_url(self.database_url)
        values["database_url"] = url.render_as_string(hide_password=True)
        return values


def _validate(settings: Settings) -> None:
    # In this order: with several wrong values, the first one named stays the same.
    _validate_listeners(settings)
    _validate_hl7(settings)
    _validate_dicom_network(settings)
    _validate_dicom_access(settings)
    _validate_mpps_ris_retention(settings)
    _validate_order_entry(settings)
    _validate_web(settings)
    _validate_sso(settings)
    _validate_audit(settings)
    _validate_watchdog(settings)
    if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise SettingsError("log_level", f"{settings.log_level!r} is not DEBUG/INFO/WARNING/ERROR")
    if settings.log_format.lower() not in {"text", "json"}:
        raise SettingsError("log_format", f"{settings.log_format!r} is not text/json")


def _validate_listeners(settings: Settings) -> None:
    for name in ("hl7_port", "hl7_tls_port", "dicom_port", "dicom_tls_port", "web_port"):
        port = getattr(settings, name)
        if not 0 <= port <= 65535:
            raise SettingsError(name, f"{port} is not a TCP port (0-65535)")
    ae = settings.dicom_ae_title
    if not ae.strip() or len(ae) > 16 or "\\" in ae or not ae.isascii() or not ae.isprintable():
        raise SettingsError(
            "dicom_ae_title", f"{ae!r} is not an AE title (1-16 printable ASCII characters)"
        )
    try:
        ipaddress.ip_address(settings.bind_address)
    except ValueError:
        if settings.bind_address != "localhost":
            raise SettingsError(
                "bind_address", f"{settings.bind_address!r} is not an IP address"
            ) from None
    if settings.lease_keepalive_seconds < 0:
        raise SettingsError("lease_keepalive_seconds", "must be 0 (the kernel's) or positive")
    if settings.lease_lifetime_seconds != 0 and settings.lease_lifetime_seconds < 3:
        raise SettingsError("lease_lifetime_seconds", "must be 0 (off) or at least 3")
    try:
        make_url(settings.database_url)
    except ArgumentError:
        raise SettingsError(
            "database_url", f"{settings.database_url!r} is not a SQLAlchemy database URL"
        ) from None


def _validate_hl7(settings: Settings) -> None:
    if settings.hl7_max_frame_bytes < 1024:
        raise SettingsError("hl7_max_frame_bytes", "must be at least 1024")
    if settings.hl7_idle_timeout_seconds <= 0:
        raise SettingsError("hl7_idle_timeout_seconds", "must be positive")
    if settings.hl7_frame_timeout_seconds <= 0:
        raise SettingsError("hl7_frame_timeout_seconds", "must be positive")
    if not 1 <= settings.hl7_max_connections <= 100_000:
        raise SettingsError("hl7_max_connections", "must be between 1 and 100000")
    if settings.hl7_max_connections_per_address < 1:
        raise SettingsError("hl7_max_connections_per_address", "must be positive")
    _validate_tls_files(settings, "hl7_tls")
    if settings.hl7_missing_start not in ("now", "reject"):
        raise SettingsError("hl7_missing_start", 'must be "now" or "reject"')
    try:
        site_zone(settings.timezone)
    except ValueError as exc:
        raise SettingsError("timezone", str(exc)) from None
    if settings.hl7_protocol_code_component not in (1, 4):
        raise SettingsError("hl7_protocol_code_component", "must be 4 (OBR-4.4) or 1 (OBR-4.1)")


def _validate_dicom_access(settings: Settings) -> None:
    if settings.dicom_max_matches < 0:
        raise SettingsError("dicom_max_matches", "must be 0 (no limit) or positive")
    if any(p.require_tls for p in settings.dicom_ae_profiles) and not settings.dicom_tls_cert:
        raise SettingsError(
            "dicom_ae_profiles", "a profile requires TLS, but dicom_tls_cert is not set"
        )
    if settings.dicom_restrict_calling_ae and not settings.dicom_ae_profiles:
        raise SettingsError(
            "dicom_restrict_calling_ae", "needs dicom_ae_profiles listing the allowed AEs"
        )


def _validate_dicom_network(settings: Settings) -> None:
    if not 1 <= settings.dicom_max_associations <= 5000:
        raise SettingsError("dicom_max_associations", "must be between 1 and 5000")
    for name in ("dicom_max_associations_per_address", "dicom_max_associations_per_ae"):
        # Above dicom_max_associations they are moot (the total applies first), not wrong.
        if not 1 <= getattr(settings, name) <= 5000:
            raise SettingsError(name, "must be between 1 and 5000")
    for name in (
        "dicom_acse_timeout_seconds",
        "dicom_dimse_timeout_seconds",
        "dicom_network_timeout_seconds",
    ):
        if not 0 < getattr(settings, name) <= 86400:
            raise SettingsError(name, "must be positive (seconds, at most a day)")
    # PS3.8 D.1 allows any length; below a few KiB every response needs many PDUs, and
    # the PDV header (6 bytes) must leave room for data.
    if not 4096 <= settings.dicom_max_pdu_bytes <= 16 * 1024 * 1024:
        raise SettingsError("dicom_max_pdu_bytes", "must be between 4096 and 16777216")
    if not 1024 <= settings.dicom_max_identifier_bytes <= 64 * 1024 * 1024:
        raise SettingsError("dicom_max_identifier_bytes", "must be between 1024 and 67108864")
    tls_files = (settings.dicom_tls_cert, settings.dicom_tls_key)
    if any(tls_files) and not all(tls_files):
        raise SettingsError(
            "dicom_tls_cert" if not settings.dicom_tls_cert else "dicom_tls_key",
            "DICOM TLS needs both dicom_tls_cert and dicom_tls_key",
        )
    if settings.dicom_tls_ca and not settings.dicom_tls_cert:
        raise SettingsError("dicom_tls_ca", "needs dicom_tls_cert and dicom_tls_key")
    if settings.dicom_tls_only and not settings.dicom_tls_cert:
        raise SettingsError("dicom_tls_only", "needs dicom_tls_cert and dicom_tls_key")
    for name in ("dicom_tls_cert", "dicom_tls_key", "dicom_tls_ca"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise SettingsError(name, f"{path!r} is not a readable file")


def _validate_tls_files(settings: Settings, prefix: str) -> None:
    cert, key, ca = (getattr(settings, f"{prefix}_{n}") for n in ("cert", "key", "ca"))
    if bool(cert) != bool(key):
        raise SettingsError(
            f"{prefix}_cert" if not cert else f"{prefix}_key",
            f"TLS needs both {prefix}_cert and {prefix}_key",
        )
    if prefix == "hl7_tls" and ca and not cert:
        raise SettingsError(f"{prefix}_ca", f"needs {prefix}_cert and {prefix}_key")
    if prefix == "ris_tls" and cert and not ca:
        raise SettingsError("ris_tls_cert", "needs ris_tls_ca (TLS to the RIS is on with it)")
    for name in ("cert", "key", "ca"):
        path = getattr(settings, f"{prefix}_{name}")
        if path and not Path(path).is_file():
            raise SettingsError(f"{prefix}_{name}", f"{path!r} is not a readable file")


def _validate_mpps_ris_retention(settings: Settings) -> None:
    from mwl.domain import SpsStatus

    if not 0 <= settings.ris_port <= 65535:
        raise SettingsError("ris_port", f"{settings.ris_port} is not a TCP port (0-65535)")
    if settings.ris_host and not settings.ris_port:
        raise SettingsError("ris_port", "is needed when ris_host is set")
    _validate_tls_files(settings, "ris_tls")
    if settings.ris_message_type not in {"ORM^O01", "OMI^O23"}:
        raise SettingsError("ris_message_type", "must be ORM^O01 or OMI^O23")
    for name in (
        "ris_ack_timeout_seconds",
        "ris_retry_initial_seconds",
        "ris_retry_max_seconds",
        "ris_poll_interval_seconds",
    ):
        if getattr(settings, name) <= 0:
            raise SettingsError(name, "must be positive")
    if settings.ris_retry_max_seconds < settings.ris_retry_initial_seconds:
        raise SettingsError("ris_retry_max_seconds", "must not be below ris_retry_initial_seconds")
    if settings.ris_max_rejects < 0:
        raise SettingsError("ris_max_rejects", "must be 0 (retry for ever) or positive")
    for status, _days in settings.retention_step_days:
        if status not in SpsStatus.__members__:
            raise SettingsError("retention_step_days", f"{status!r} is not a step status")
    for status, _days in settings.retention_mpps_days:
        if status not in {"IN PROGRESS", "COMPLETED", "DISCONTINUED"}:
            raise SettingsError("retention_mpps_days", f"{status!r} is not an MPPS status")
    for name in (
        "retention_scheduled_idle_days",
        "retention_outbox_days",
        "retention_interval_seconds",
    ):
        if getattr(settings, name) < 0:
            raise SettingsError(name, "must be 0 (off) or positive")
    if settings.retention_batch_size < 1:
        raise SettingsError("retention_batch_size", "must be at least 1")


def _validate_audit(settings: Settings) -> None:
    if settings.audit_syslog_transport not in {"tls", "udp", "tcp"}:
        raise SettingsError("audit_syslog_transport", "must be tls, udp or tcp")
    if not 1 <= settings.audit_syslog_port <= 65535:
        raise SettingsError("audit_syslog_port", "must be a port (1-65535)")
    if settings.audit_syslog_host and settings.audit_syslog_transport == "tls":
        if not settings.audit_syslog_ca:
            raise SettingsError("audit_syslog_ca", "is needed for the tls transport")
    if bool(settings.audit_syslog_cert) != bool(settings.audit_syslog_key):
        raise SettingsError(
            "audit_syslog_cert" if not settings.audit_syslog_cert else "audit_syslog_key",
            "mutual TLS needs both audit_syslog_cert and audit_syslog_key",
        )
    for name in ("audit_syslog_ca", "audit_syslog_cert", "audit_syslog_key"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise SettingsError(name, f"{path!r} is not a readable file")


def _validate_watchdog(settings: Settings) -> None:
    for name in (
        "watchdog_interval_seconds",
        "watchdog_hl7_silent_minutes",
        "watchdog_scanner_silent_minutes",
        "watchdog_outbox_minutes",
        "watchdog_overdue_minutes",
    ):
        if getattr(settings, name) < 0:
            raise SettingsError(name, "must be 0 (off) or more")
    if settings.watchdog_scanner_failures < 0:
        raise SettingsError("watchdog_scanner_failures", "must be 0 (off) or more")
    if not 1 <= settings.watchdog_smtp_port <= 65535:
        raise SettingsError("watchdog_smtp_port", "must be a port (1-65535)")
    if settings.watchdog_smtp_host and not (
        settings.watchdog_smtp_from and settings.watchdog_smtp_to
    ):
        raise SettingsError(
            "watchdog_smtp_to" if settings.watchdog_smtp_from else "watchdog_smtp_from",
            "e-mail needs both watchdog_smtp_from and watchdog_smtp_to",
        )
    url = settings.watchdog_webhook_url
    if url and not url.startswith(("http://", "https://")):
        raise SettingsError("watchdog_webhook_url", "must be an http:// or https:// URL")


def _validate_web(settings: Settings) -> None:
    tls_files = (settings.web_tls_cert, settings.web_tls_key)
    if any(tls_files) and not all(tls_files):
        raise SettingsError(
            "web_tls_cert" if not settings.web_tls_cert else "web_tls_key",
            "HTTPS needs both web_tls_cert and web_tls_key",
        )
    for name in ("web_tls_cert", "web_tls_key"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise SettingsError(name, f"{path!r} is not a readable file")
    for name in ("web_session_idle_minutes", "web_session_lifetime_hours"):
        if not 0 < getattr(settings, name) <= 24 * 366:
            raise SettingsError(name, "must be positive (at most a year)")
    for name in ("web_login_failures_per_user", "web_login_failures_per_address"):
        if not 1 <= getattr(settings, name) <= 10_000:
            raise SettingsError(name, "must be between 1 and 10000")
    if not 0 < settings.web_login_first_delay_seconds <= settings.web_login_max_delay_seconds:
        raise SettingsError(
            "web_login_first_delay_seconds", "must be positive and not above the maximum delay"
        )
    if settings.web_login_max_delay_seconds > 86400:
        raise SettingsError("web_login_max_delay_seconds", "must be at most a day (86400)")


# Characters of generated identifiers: no C-FIND wildcard (* ?), no backslash, no space.
_IDENTIFIER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-_")


def _validate_sso(settings: Settings) -> None:
    if settings.oidc_issuer:
        if not settings.oidc_issuer.startswith("https://"):
            raise SettingsError("oidc_issuer", "must be an https:// URL")
        if not settings.oidc_client_id:
            raise SettingsError("oidc_client_id", "is needed while oidc_issuer is set")
        if not settings.oidc_role_map:
            raise SettingsError("oidc_role_map", "is needed while oidc_issuer is set")
        if "openid" not in settings.oidc_scopes.split():
            raise SettingsError("oidc_scopes", "must include openid")
    if settings.ldap_url:
        if not settings.ldap_url.startswith(("ldap://", "ldaps://")):
            raise SettingsError("ldap_url", "must be an ldap:// or ldaps:// URL")
        if "{username}" not in settings.ldap_user_dn_template:
            raise SettingsError("ldap_user_dn_template", "must contain {username}")
        if not settings.ldap_group_role_map:
            raise SettingsError("ldap_group_role_map", "is needed while ldap_url is set")
        if not 0 < settings.ldap_timeout_seconds <= 300:
            raise SettingsError("ldap_timeout_seconds", "must be positive (at most 300)")
    for name in ("oidc_ca", "ldap_ca"):
        path = getattr(settings, name)
        if path and not Path(path).is_file():
            raise SettingsError(name, f"{path!r} is not a readable file")


def _validate_order_entry(settings: Settings) -> None:
    # Accession numbers are SH (16): the prefix leaves room for YYMMDD and 4 digits.
    for name, longest in (("order_accession_prefix", 6), ("order_unidentified_id_prefix", 40)):
        prefix = getattr(settings, name)
        if len(prefix) > longest or not set(prefix) <= _IDENTIFIER_CHARS:
            raise SettingsError(
                name, f"{prefix!r} must be at most {longest} of A-Z, a-z, 0-9, '.', '-', '_'"
            )
    if not settings.order_unidentified_id_prefix:
        # The prefix is what marks a patient ID as temporary (replaceable on the page).
        raise SettingsError("order_unidentified_id_prefix", "must not be empty")
    template = settings.order_unidentified_name
    try:
        sample = template.format(sex="X", date="20261121", time="235959", id="TMP202611210001")
    except (KeyError, IndexError, ValueError) as exc:
        raise SettingsError(
            "order_unidentified_name",
            f"{template!r} is not a name template ({{sex}}, {{date}}, {{time}}, {{id}}): {exc}",
        ) from None
    if (
        not sample.strip("^ ")
        or "\\" in sample
        or "=" in sample
        or sample.count("^") > 4
        or len(sample) > 64
        or not sample.isprintable()
    ):
        raise SettingsError(
            "order_unidentified_name",
            f"{template!r} does not make a person name (Family^Given^Middle^Prefix^Suffix,"
            " 64 characters at most)",
        )


def _coerce(name: str, kind: type, value: Any) -> Any:
    """Turn a TOML or environment value into the field's type, or say which setting is bad."""
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            if kind is bool:
                if text.lower() in {"1", "true", "yes", "on"}:
                    return True
                if text.lower() in {"0", "false", "no", "off"}:
                    return False
                raise ValueError(text)
            if kind is int:
                return int(text)
            if kind is float:
                return float(text)
            if kind is str:
                return value
        except ValueError:
            pass
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise SettingsError(name, f"{value!r} is not a valid {kind.__name__}")


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def structured(convert: Callable[[Any], Any]) -> dict[str, Any]:
    """Field metadata for a structured setting (tables, lists of rules).

    ``convert`` takes the TOML value (or the JSON-decoded environment variable) and
    returns the field's value, raising ``ValueError`` with a reason when it is bad.
    Use as ``field(default=..., metadata=structured(fn))``.
    """
    return {"convert": convert}


def _convert(name: str, variable: str, value: Any, from_env: bool) -> Any:
    f = _FIELDS[name]
    convert = f.metadata.get("convert")
    if convert is None:
        return _coerce(variable, _TYPES[str(f.type)], value)
    try:
        if from_env:
            value = json.loads(value)
        return convert(value)
    except (ValueError, TypeError, KeyError) as exc:
        raise SettingsError(variable, f"not valid: {exc}") from None


def convert_setting(name: str, value: Any) -> Any:
    """Turn one value, in its TOML form, into the type of setting ``name``.

    The same conversion the TOML file gets (structured settings through their
    ``convert`` metadata); used for settings changed on the admin page.

    Raises
    ------
    SettingsError
        Unknown setting, or a value of the wrong type or form.
    """
    if name not in _FIELDS:
        raise SettingsError(name, "unknown setting")
    return _convert(name, name, value, from_env=False)


def _flatten_toml(data: Mapping[str, Any]) -> dict[str, Any]:
    """``[hl7] port = 1`` and ``hl7_port = 1`` both become ``{"hl7_port": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            for sub, subvalue in value.items():
                flat[f"{key}_{sub}"] = subvalue
        else:
            flat[key] = value
    return flat


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings: defaults < ``config_file`` < ``MWL_*`` variables < ``overrides``.

    Raises
    ------
    SettingsError
        Naming the first bad setting: unknown key, wrong type or invalid value.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError("config", f"cannot read {config_file}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError("config", f"{config_file} is not valid TOML: {exc}") from None
        for key, value in _flatten_toml(data).items():
            if key not in _FIELDS:
                raise SettingsError(key, f"unknown setting in {config_file}")
            values[key] = _convert(key, key, value, from_env=False)
    env = os.environ if environ is None else environ
    for name in _FIELDS:
        variable = ENV_PREFIX + name.upper()
        if variable in env:
            values[name] = _convert(name, variable, env[variable], from_env=True)
    for key, value in overrides.items():
        if value is not None:
            values[key] = _convert(key, key, value, from_env=False)
    return Settings(**values)


_FIELDS = {f.name: f for f in fields(Settings)}
