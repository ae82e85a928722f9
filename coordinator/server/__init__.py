"""The gRPC edge: thin servicers per mode, the audit service, the asyncio server (admission limits, fair worker
pool), server options and mTLS identity."""
