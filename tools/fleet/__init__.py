"""The fleet load generator: N simulated gateways publishing what real gateways publish, from a recorded
`edge-ems sim` run (issue 18).

- trace.py: record a trace - the real controller against a simulated site with the real uplink hook in
  spool-only mode, so every record (1-min telemetry, provisional and signed intervals, alarms, events) is
  what the gateway's spool holds, byte for byte; plus the run's ledger bodies.
- gateway.py: one simulated gateway replaying a trace at a per-gateway phase: its own id, Ed25519 key,
  ledger (the real LedgerWriter), boot id and seq; records encoded by the spool's encoder, batches by the
  drain's, interval bodies by the carbon hook's uplink_body.
- loop.py: many gateways' MQTT v5 connections (paho, one client each) on one selector loop in one process,
  a virtual clock at a chosen speed-up, confirm=cloud receipts with their end-to-end lag.
- __main__.py: `python -m tools.fleet record|keys|run`.
"""
