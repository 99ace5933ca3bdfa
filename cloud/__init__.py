"""The central cloud's side of edge-ems (issue 18): ingest into PostgreSQL, the gateway registry, signed
commands. Never installed on a gateway (tools/gateway/ bundles controller/ and drivers/ only); it may import
the controller's pure helpers (ledger line verification, the uplink record format, command checks), the
controller never imports it (tests/test_cloud_layering.py)."""
