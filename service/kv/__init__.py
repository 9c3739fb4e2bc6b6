"""The chunk KV cache: its engine (KvCache), leases, host-tier placement and wiring."""
