"""The mode-independent round pipeline (driver, uploads, attestation, audit trail) and one plug-in per mode.

No grpc and no protobuf here: the server and the tests drive it through its public methods.
"""
