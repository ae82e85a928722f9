"""The only protobuf <-> dataclass translation, and the one two-way exception <-> gRPC status table."""
