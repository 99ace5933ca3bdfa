-- edge-ems cloud schema, version 1 (cloud/schema.py applies it; docs/cloud.md describes it).
-- One row per uplink record, keyed by (gateway_id, boot_id, seq): the gateway's spool gives every record a
-- seq strictly increasing per gateway across restarts and keeps the boot id it was written under, so a
-- re-sent copy carries the same key and INSERT ... ON CONFLICT DO NOTHING stores it once. Every record
-- lands in exactly one of telemetry, alarms (gateway rows), events, intervals, provisional_intervals,
-- command_results, rejected: the view uplink_records is their union.
-- Times: timestamptz (UTC); energies kWh, masses kg CO2e, as in the gateway's records.

CREATE TABLE IF NOT EXISTS schema_version (
    version     integer PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

-- The registry -------------------------------------------------------------------------------------------
CREATE TABLE IF NOT EXISTS gateways (
    id           text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._-]{1,64}$'),
    site         text NOT NULL CHECK (site ~ '^[A-Za-z0-9._-]{1,64}$'),
    company      text,
    -- the site profile's command limits (controller/uplink/commands.py Limits): soc_min_pct, soc_max_pct,
    -- charge_max_kw, discharge_max_kw; and the profile's name/path it came from
    limits       jsonb NOT NULL,
    profile      text NOT NULL,
    cmd_counter  bigint NOT NULL DEFAULT 0,        -- last command counter issued to this gateway
    added_at     timestamptz NOT NULL DEFAULT now()
);

-- A gateway's ledger keys (Ed25519, raw 32 bytes). rotate-key closes the current key at a time and opens the
-- new one there: a line is checked against the key valid at its own t_start, so old lines stay verifiable.
CREATE TABLE IF NOT EXISTS gateway_keys (
    gateway_id   text NOT NULL REFERENCES gateways (id),
    fingerprint  text NOT NULL,                    -- 'sha256:' + hex of the raw key (controller/carbon/keys.py)
    pubkey       bytea NOT NULL CHECK (length(pubkey) = 32),
    valid_from   timestamptz NOT NULL DEFAULT '-infinity',
    valid_to     timestamptz,                      -- NULL: open
    added_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (gateway_id, fingerprint),
    CHECK (valid_to IS NULL OR valid_to > valid_from)
);

-- Last retained status per gateway (online / offline, boot id).
CREATE TABLE IF NOT EXISTS gateway_status (
    gateway_id   text PRIMARY KEY,
    site         text NOT NULL,
    state        text NOT NULL,
    boot_id      text,
    t            timestamptz,
    received_at  timestamptz NOT NULL DEFAULT now()
);

-- Uplink records ------------------------------------------------------------------------------------------
-- common columns: gateway_id, boot_id, seq (the key), site, t (the gateway's record time), clock (its clock
-- status), received_at (the ingest's commit time)
CREATE TABLE IF NOT EXISTS telemetry (
    gateway_id   text NOT NULL,
    boot_id      text NOT NULL,
    seq          bigint NOT NULL,
    site         text NOT NULL,
    t            timestamptz NOT NULL,
    clock        text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    start_s      double precision,
    end_s        double precision,
    body         jsonb NOT NULL,                   -- the 1-min summary (points: mean/min/max/n)
    PRIMARY KEY (gateway_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS telemetry_gw_t ON telemetry (gateway_id, t);

CREATE TABLE IF NOT EXISTS events (
    gateway_id   text NOT NULL,
    boot_id      text NOT NULL,
    seq          bigint NOT NULL,
    site         text NOT NULL,
    t            timestamptz NOT NULL,
    clock        text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    event        text NOT NULL,
    body         jsonb NOT NULL,
    PRIMARY KEY (gateway_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS events_gw_t ON events (gateway_id, t);

-- Alarms: the gateway's (source 'gateway', with its seq) and the cloud's own (source 'cloud', no seq:
-- a rejected ledger line, an unknown gateway, an undecodable message).
CREATE TABLE IF NOT EXISTS alarms (
    id           bigserial PRIMARY KEY,
    source       text NOT NULL DEFAULT 'gateway' CHECK (source IN ('gateway', 'cloud')),
    gateway_id   text NOT NULL,
    boot_id      text,
    seq          bigint,
    site         text,
    t            timestamptz NOT NULL,
    clock        text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    alarm        text NOT NULL,
    state        text NOT NULL,                    -- raised | cleared | acknowledged
    severity     text,
    value        jsonb,
    CHECK ((source = 'gateway') = (seq IS NOT NULL AND boot_id IS NOT NULL))
);
CREATE UNIQUE INDEX IF NOT EXISTS alarms_record ON alarms (gateway_id, boot_id, seq);
CREATE INDEX IF NOT EXISTS alarms_gw_t ON alarms (gateway_id, t);

-- 15-minute intervals whose signed ledger line verified against the gateway's key on arrival. The summary
-- columns are the ones the gateway's uplink body carries (controller/carbon/hook.py uplink_body) and were
-- checked equal to those recomputed from the signed payload; `payload` is the signed record itself
-- (sources, sinks, Scope 1/2 location and market, CFE, KPIs, jobs) and `line` its exact bytes.
CREATE TABLE IF NOT EXISTS intervals (
    gateway_id             text NOT NULL,
    boot_id                text NOT NULL,
    seq                    bigint NOT NULL,
    site                   text NOT NULL,
    t                      timestamptz NOT NULL,
    clock                  text,
    received_at            timestamptz NOT NULL DEFAULT now(),
    t_start                timestamptz NOT NULL,
    t_end                  timestamptz NOT NULL,
    covered_s              double precision NOT NULL,
    partial                boolean NOT NULL,
    grid_import_kwh        double precision NOT NULL,
    grid_export_kwh        double precision NOT NULL,
    pv_kwh                 double precision NOT NULL,
    genset_kwh             double precision NOT NULL,
    battery_discharge_kwh  double precision NOT NULL,
    battery_charge_kwh     double precision NOT NULL,
    it_kwh                 double precision NOT NULL,
    load_kwh               double precision NOT NULL,
    scope1_kg              double precision NOT NULL,
    scope2_location_kg     double precision NOT NULL,
    scope2_market_kg       double precision NOT NULL,
    co2_kg                 double precision NOT NULL,  -- scope1 + scope2 location, as the uplink body
    renewable_share        double precision,
    ledger_n               bigint NOT NULL,
    ledger_prev            text NOT NULL,              -- hex SHA-256 of the previous ledger line
    line_sha256            text NOT NULL,              -- hex SHA-256 of `line` (the next one's prev)
    key_fingerprint        text NOT NULL,              -- the registered key it verified with
    ledger_clock           text NOT NULL,
    line                   text NOT NULL,
    payload                jsonb NOT NULL,
    PRIMARY KEY (gateway_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS intervals_gw_start ON intervals (gateway_id, t_start);
CREATE INDEX IF NOT EXISTS intervals_site_start ON intervals (site, t_start);

-- The uplink's own metered estimate of an interval (provisional: true), superseded by the signed one.
CREATE TABLE IF NOT EXISTS provisional_intervals (
    gateway_id   text NOT NULL,
    boot_id      text NOT NULL,
    seq          bigint NOT NULL,
    site         text NOT NULL,
    t            timestamptz NOT NULL,
    clock        text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    start_s      double precision NOT NULL,
    body         jsonb NOT NULL,
    PRIMARY KEY (gateway_id, boot_id, seq)
);

-- Verdicts of commands as the gateway reported them on cmd/result.
CREATE TABLE IF NOT EXISTS command_results (
    gateway_id   text NOT NULL,
    boot_id      text NOT NULL,
    seq          bigint NOT NULL,
    site         text NOT NULL,
    t            timestamptz NOT NULL,
    clock        text,
    received_at  timestamptz NOT NULL DEFAULT now(),
    command_id   text,
    counter      bigint,
    type         text,
    verdict      text NOT NULL,
    reason       text,
    PRIMARY KEY (gateway_id, boot_id, seq)
);
CREATE INDEX IF NOT EXISTS command_results_cmd ON command_results (gateway_id, command_id);

-- Quarantine: records kept apart, never mixed into the tables above - an interval whose ledger line does
-- not verify (signature, key, gateway, type bounds, summary differing from the signed payload), a record of
-- an unregistered gateway or of another site than its registration, a record that does not parse. A
-- record with a key is stored once (unique); a message that cannot be decoded at all has no key.
CREATE TABLE IF NOT EXISTS rejected (
    id           bigserial PRIMARY KEY,
    gateway_id   text,
    boot_id      text,
    seq          bigint,
    site         text,
    kind         text,
    topic        text NOT NULL,
    received_at  timestamptz NOT NULL DEFAULT now(),
    reason       text NOT NULL,
    record       jsonb,                            -- the record as received (when it parsed)
    raw          bytea,                            -- the message's first bytes (when it did not)
    line         text,                             -- the ledger line (intervals)
    digest       text NOT NULL                     -- SHA-256 of the message (no key) or of the record
);
CREATE UNIQUE INDEX IF NOT EXISTS rejected_record ON rejected (gateway_id, boot_id, seq);
-- a message without a usable key, re-sent, is kept once
CREATE UNIQUE INDEX IF NOT EXISTS rejected_message ON rejected (topic, digest) WHERE seq IS NULL;

-- Commands audit: every command the cloud signed (or refused to sign), with the verdict the gateway sent.
CREATE TABLE IF NOT EXISTS commands (
    id              text PRIMARY KEY,
    gateway_id      text NOT NULL REFERENCES gateways (id),
    counter         bigint NOT NULL,
    type            text NOT NULL,
    args            jsonb NOT NULL,
    issued_s        double precision NOT NULL,
    expires_s       double precision NOT NULL,
    envelope        text,                          -- the signed message as published on .../cmd
    signer          text NOT NULL,                 -- fingerprint of the cloud key that signed it
    operator        text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL CHECK (status IN ('refused_by_cloud', 'published', 'accepted', 'refused',
                                                    'no_verdict')),
    reason          text,
    verdict_at      timestamptz,
    UNIQUE (gateway_id, counter)
);

-- Every stored record, whichever table took it (what "every seq exactly once" is checked on).
CREATE OR REPLACE VIEW uplink_records AS
    SELECT gateway_id, boot_id, seq, 'telemetry' AS kind, 'telemetry' AS stored_in FROM telemetry
    UNION ALL SELECT gateway_id, boot_id, seq, 'event', 'events' FROM events
    UNION ALL SELECT gateway_id, boot_id, seq, 'alarm', 'alarms' FROM alarms WHERE source = 'gateway'
    UNION ALL SELECT gateway_id, boot_id, seq, 'interval', 'intervals' FROM intervals
    UNION ALL SELECT gateway_id, boot_id, seq, 'interval', 'provisional_intervals' FROM provisional_intervals
    UNION ALL SELECT gateway_id, boot_id, seq, 'cmd/result', 'command_results' FROM command_results
    UNION ALL SELECT gateway_id, boot_id, seq, kind, 'rejected' FROM rejected WHERE seq IS NOT NULL;

INSERT INTO schema_version (version) VALUES (1) ON CONFLICT DO NOTHING;
