"""Compute-load tracking: announced and measured jobs (jobs.py), the green-headroom signal and defer/resume
requests (headroom.py). Payloads and topics: drivers/compute.py."""
