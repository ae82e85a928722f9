"""The gRPC edge: thin servicers per mode, the audit service, interceptors, server options and mTLS identity."""
